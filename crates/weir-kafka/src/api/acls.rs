//! CreateAcls, DescribeAcls, DeleteAcls: the server's access control lists in Kafka's terms,
//! so that Kafka's admin tools (`kafka-acls.sh`, AdminClient, confluent-kafka's and
//! kafka-python's admin clients) manage them. Advertised only when the server authorizes
//! requests by ACLs; asked anyway, they answer SECURITY_DISABLED.
//!
//! The rules are the ones `weir acl` edits (`weir_auth::acl`), written the same way (under the
//! file's lock, replaced atomically) and read again at once. Kafka's model maps one to one but
//! for what weir does not have: hosts (only `*`), and the resource types and operations it
//! does not check (transactional ids, delegation tokens, users; cluster actions, idempotent
//! writes, tokens) are refused by name. DescribeConfigs and AlterConfigs are checked as
//! describe and alter, so they are refused too, naming those. Kafka's cluster is named
//! `kafka-cluster`, weir's `*`: each is turned into the other. Pipeline rules have no Kafka
//! resource type and are not shown here.
//!
//! Creating and deleting take `alter` on the cluster, describing takes `describe` (Kafka's
//! rules).

use std::sync::Arc;

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use weir_auth::acl::{Acl, AclFile, Authorizer, Operation, PatternType, Permission, ResourceType};

use crate::code;
use crate::dispatch::Ctx;

/// Kafka's name of the cluster resource.
const KAFKA_CLUSTER: &str = "kafka-cluster";

// Kafka's numbers (org.apache.kafka.common.acl and .resource).
const ANY: i8 = 1;
const MATCH: i8 = 2;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;

fn resource_in(n: i8) -> Result<ResourceType, String> {
    match n {
        2 => Ok(ResourceType::Topic),
        3 => Ok(ResourceType::Group),
        4 => Ok(ResourceType::Cluster),
        5 => Err("transactional ids have no ACLs here (transactions are not served)".into()),
        6 => Err("delegation tokens are not served".into()),
        7 => Err("user resources are not served".into()),
        n => Err(format!(
            "resource type {n} is not one of TOPIC, GROUP, CLUSTER"
        )),
    }
}

fn resource_out(r: ResourceType) -> Option<i8> {
    match r {
        ResourceType::Topic => Some(2),
        ResourceType::Group => Some(3),
        ResourceType::Cluster => Some(4),
        ResourceType::Pipeline => None,
    }
}

fn operation_in(n: i8) -> Result<Operation, String> {
    Ok(match n {
        2 => Operation::All,
        3 => Operation::Read,
        4 => Operation::Write,
        5 => Operation::Create,
        6 => Operation::Delete,
        7 => Operation::Alter,
        8 => Operation::Describe,
        10 => return Err("DESCRIBE_CONFIGS is checked as DESCRIBE here: grant DESCRIBE".into()),
        11 => return Err("ALTER_CONFIGS is checked as ALTER here: grant ALTER".into()),
        n => {
            return Err(format!(
                "operation {n} is not one of ALL, READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE"
            ));
        }
    })
}

fn operation_out(o: Operation) -> i8 {
    match o {
        Operation::All => 2,
        Operation::Read => 3,
        Operation::Write => 4,
        Operation::Create => 5,
        Operation::Delete => 6,
        Operation::Alter => 7,
        Operation::Describe => 8,
    }
}

fn permission_in(n: i8) -> Result<Permission, String> {
    match n {
        2 => Ok(Permission::Deny),
        3 => Ok(Permission::Allow),
        n => Err(format!("permission type {n} is not DENY (2) or ALLOW (3)")),
    }
}

fn permission_out(p: Permission) -> i8 {
    match p {
        Permission::Deny => 2,
        Permission::Allow => 3,
    }
}

fn pattern_out(p: PatternType) -> i8 {
    match p {
        PatternType::Literal => LITERAL,
        PatternType::Prefixed => PREFIXED,
    }
}

/// weir's name of a resource Kafka names `name`.
fn name_in(resource: ResourceType, name: &str) -> String {
    match (resource, name) {
        (ResourceType::Cluster, KAFKA_CLUSTER) => "*".into(),
        _ => name.into(),
    }
}

fn name_out(resource: ResourceType, name: &str) -> String {
    match resource {
        ResourceType::Cluster => KAFKA_CLUSTER.into(),
        _ => name.into(),
    }
}

/// A rule from a CreateAcls entry, or why it cannot be one.
fn creation(c: &kafka_protocol::messages::create_acls_request::AclCreation) -> Result<Acl, String> {
    if &*c.host != "*" {
        return Err(format!(
            "host {:?}: rules here hold for every host (*)",
            &*c.host
        ));
    }
    let resource = resource_in(c.resource_type)?;
    let pattern = match c.resource_pattern_type {
        LITERAL => PatternType::Literal,
        PREFIXED => PatternType::Prefixed,
        n => {
            return Err(format!(
                "pattern type {n} is not LITERAL (3) or PREFIXED (4)"
            ));
        }
    };
    let acl = Acl {
        principal: c.principal.to_string(),
        resource,
        pattern,
        name: name_in(resource, &c.resource_name),
        operation: operation_in(c.operation)?,
        permission: permission_in(c.permission_type)?,
    };
    acl.check()?;
    Ok(acl)
}

/// A DescribeAcls or DeleteAcls filter, checked.
struct Filter {
    /// A host other than `*` was asked for: every rule is for `*`, so nothing matches.
    other_host: bool,
    resource: Option<ResourceType>,
    /// The name as Kafka gave it: each rule's resource type says what weir calls it
    /// (`kafka-cluster` is `*` for the cluster only).
    name: Option<String>,
    pattern: i8,
    principal: Option<String>,
    operation: Option<Operation>,
    permission: Option<Permission>,
}

impl Filter {
    #[allow(clippy::too_many_arguments)]
    fn new(
        resource: i8,
        name: Option<&StrBytes>,
        pattern: i8,
        principal: Option<&StrBytes>,
        host: Option<&StrBytes>,
        operation: i8,
        permission: i8,
    ) -> Result<Self, String> {
        let resource = match resource {
            ANY => None,
            n => Some(resource_in(n)?),
        };
        if !matches!(pattern, ANY | MATCH | LITERAL | PREFIXED) {
            return Err(format!(
                "pattern type filter {pattern} is not ANY, MATCH, LITERAL or PREFIXED"
            ));
        }
        Ok(Self {
            other_host: host.is_some_and(|h| &**h != "*"),
            name: name.map(|n| n.to_string()),
            resource,
            pattern,
            principal: principal.map(|p| p.to_string()),
            operation: match operation {
                ANY => None,
                n => Some(operation_in(n)?),
            },
            permission: match permission {
                ANY => None,
                n => Some(permission_in(n)?),
            },
        })
    }

    fn matches(&self, a: &Acl) -> bool {
        if self.other_host || resource_out(a.resource).is_none() {
            return false;
        }
        let name = self.name.as_deref().map(|n| name_in(a.resource, n));
        let named = match (&name, self.pattern) {
            (None, LITERAL) => a.pattern == PatternType::Literal,
            (None, PREFIXED) => a.pattern == PatternType::Prefixed,
            (None, _) => true,
            (Some(n), ANY) => a.name == *n,
            (Some(n), LITERAL) => a.pattern == PatternType::Literal && a.name == *n,
            (Some(n), PREFIXED) => a.pattern == PatternType::Prefixed && a.name == *n,
            // MATCH: the rules that would decide for a resource named `n`.
            (Some(n), _) => match a.pattern {
                PatternType::Literal => a.name == *n || a.name == "*",
                PatternType::Prefixed => n.starts_with(&a.name),
            },
        };
        self.resource.is_none_or(|r| r == a.resource)
            && named
            && self.principal.as_ref().is_none_or(|p| *p == a.principal)
            && self.operation.is_none_or(|o| o == a.operation)
            && self.permission.is_none_or(|p| p == a.permission)
    }
}

/// The server's rules, or why they cannot be managed: SECURITY_DISABLED without ACLs,
/// CLUSTER_AUTHORIZATION_FAILED without the right on the cluster.
fn rules(cx: &Ctx<'_>, op: Operation) -> Result<Arc<Authorizer>, (i16, String)> {
    let Some(rules) = cx.kafka.broker.auth().and_then(|a| a.acls()) else {
        return Err((
            code::SECURITY_DISABLED,
            "this server does not authorize by ACLs ([auth] acls = false)".into(),
        ));
    };
    if !cx.access.allows_cluster(op) {
        return Err((
            code::CLUSTER_AUTHORIZATION_FAILED,
            format!(
                "{} may not {} the cluster",
                cx.access.principal(),
                op.name()
            ),
        ));
    }
    Ok(Arc::clone(rules))
}

/// Edits the rules' file (on a blocking thread: it locks, writes and syncs) and reads it
/// again at once, so that the change holds when the answer goes out.
async fn edit<T: Send + 'static>(
    rules: Arc<Authorizer>,
    change: impl FnOnce(&mut AclFile) -> T + Send + 'static,
) -> Result<T, String> {
    let done = tokio::task::spawn_blocking(move || {
        let out = AclFile::edit(rules.path(), |f| Ok(change(f)))?;
        rules.reload_if_changed()?;
        Ok::<T, weir_auth::StoreError>(out)
    })
    .await;
    match done {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("the ACL edit failed: {e}")),
    }
}

fn text(s: String) -> Option<StrBytes> {
    Some(StrBytes::from_string(s))
}

pub(crate) async fn create(cx: &mut Ctx<'_>, r: CreateAclsRequest) -> CreateAclsResponse {
    let results: Vec<Result<Acl, (i16, String)>> = match rules(cx, Operation::Alter) {
        Err(e) => r.creations.iter().map(|_| Err(e.clone())).collect(),
        Ok(authorizer) => {
            let checked: Vec<Result<Acl, (i16, String)>> = r
                .creations
                .iter()
                .map(|c| creation(c).map_err(|e| (code::INVALID_REQUEST, e)))
                .collect();
            let new: Vec<Acl> = checked.iter().filter_map(|c| c.clone().ok()).collect();
            let written = if new.is_empty() {
                Ok(())
            } else {
                edit(authorizer, move |f| {
                    for a in new {
                        // Adding a rule that is there already changes nothing (as in Kafka).
                        if !f.acls.contains(&a) {
                            f.acls.push(a);
                        }
                    }
                })
                .await
            };
            match written {
                Ok(()) => checked,
                Err(e) => checked
                    .into_iter()
                    .map(|c| c.and_then(|_| Err((code::KAFKA_STORAGE_ERROR, e.clone()))))
                    .collect(),
            }
        }
    };
    for a in results.iter().flatten() {
        tracing::info!(principal = %cx.access.principal(), rule = ?a, "ACL created over Kafka");
    }
    let results = results
        .into_iter()
        .map(|r| match r {
            Ok(_) => AclCreationResult::default(),
            Err((error, message)) => AclCreationResult::default()
                .with_error_code(error)
                .with_error_message(text(message)),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub(crate) async fn describe(cx: &mut Ctx<'_>, r: DescribeAclsRequest) -> DescribeAclsResponse {
    let refused = |(error, message): (i16, String)| {
        DescribeAclsResponse::default()
            .with_error_code(error)
            .with_error_message(text(message))
    };
    let authorizer = match rules(cx, Operation::Describe) {
        Ok(a) => a,
        Err(e) => return refused(e),
    };
    let filter = match Filter::new(
        r.resource_type_filter,
        r.resource_name_filter.as_ref(),
        r.pattern_type_filter,
        r.principal_filter.as_ref(),
        r.host_filter.as_ref(),
        r.operation,
        r.permission_type,
    ) {
        Ok(f) => f,
        Err(e) => return refused((code::INVALID_REQUEST, e)),
    };
    // Grouped by resource, in the order first met.
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for a in authorizer.rules().iter().filter(|a| filter.matches(a)) {
        let Some(resource_type) = resource_out(a.resource) else {
            continue;
        };
        let name = StrBytes::from_string(name_out(a.resource, &a.name));
        let pattern_type = pattern_out(a.pattern);
        let description = AclDescription::default()
            .with_principal(StrBytes::from_string(a.principal.clone()))
            .with_host(StrBytes::from_static_str("*"))
            .with_operation(operation_out(a.operation))
            .with_permission_type(permission_out(a.permission));
        match resources.iter_mut().find(|r| {
            r.resource_type == resource_type
                && r.resource_name == name
                && r.pattern_type == pattern_type
        }) {
            Some(r) => r.acls.push(description),
            None => resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(name)
                    .with_pattern_type(pattern_type)
                    .with_acls(vec![description]),
            ),
        }
    }
    DescribeAclsResponse::default()
        .with_error_message(None)
        .with_resources(resources)
}

pub(crate) async fn delete(cx: &mut Ctx<'_>, r: DeleteAclsRequest) -> DeleteAclsResponse {
    let refused = |(error, message): (i16, String)| {
        DeleteAclsFilterResult::default()
            .with_error_code(error)
            .with_error_message(text(message))
    };
    let authorizer = match rules(cx, Operation::Alter) {
        Ok(a) => a,
        Err(e) => {
            let results = r.filters.iter().map(|_| refused(e.clone())).collect();
            return DeleteAclsResponse::default().with_filter_results(results);
        }
    };
    let (filters, errors): (Vec<Option<Filter>>, Vec<Option<String>>) = r
        .filters
        .iter()
        .map(|f: &DeleteAclsFilter| {
            match Filter::new(
                f.resource_type_filter,
                f.resource_name_filter.as_ref(),
                f.pattern_type_filter,
                f.principal_filter.as_ref(),
                f.host_filter.as_ref(),
                f.operation,
                f.permission_type,
            ) {
                Ok(f) => (Some(f), None),
                Err(e) => (None, Some(e)),
            }
        })
        .unzip();
    // Each rule goes to the first filter that matches it, as Kafka reports it.
    let removed = edit(authorizer, move |file| {
        let mut removed: Vec<Vec<Acl>> = filters.iter().map(|_| Vec::new()).collect();
        file.acls.retain(|a| {
            match filters
                .iter()
                .position(|f| f.as_ref().is_some_and(|f| f.matches(a)))
            {
                Some(i) => {
                    removed[i].push(a.clone());
                    false
                }
                None => true,
            }
        });
        removed
    })
    .await;
    let results = match removed {
        Err(e) => errors
            .iter()
            .map(|err| match err {
                Some(err) => refused((code::INVALID_REQUEST, err.clone())),
                None => refused((code::KAFKA_STORAGE_ERROR, e.clone())),
            })
            .collect(),
        Ok(removed) => errors
            .into_iter()
            .zip(removed)
            .map(|(err, acls)| match err {
                Some(err) => refused((code::INVALID_REQUEST, err)),
                None => {
                    for a in &acls {
                        tracing::info!(principal = %cx.access.principal(), rule = ?a, "ACL deleted over Kafka");
                    }
                    DeleteAclsFilterResult::default().with_matching_acls(
                        acls.into_iter()
                            .filter_map(|a| {
                                Some(
                                    DeleteAclsMatchingAcl::default()
                                        .with_resource_type(resource_out(a.resource)?)
                                        .with_resource_name(StrBytes::from_string(name_out(
                                            a.resource, &a.name,
                                        )))
                                        .with_pattern_type(pattern_out(a.pattern))
                                        .with_principal(StrBytes::from_string(a.principal))
                                        .with_host(StrBytes::from_static_str("*"))
                                        .with_operation(operation_out(a.operation))
                                        .with_permission_type(permission_out(a.permission)),
                                )
                            })
                            .collect(),
                    )
                }
            })
            .collect(),
    };
    DeleteAclsResponse::default().with_filter_results(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(resource: ResourceType, pattern: PatternType, name: &str) -> Acl {
        Acl {
            principal: "User:alice".into(),
            resource,
            pattern,
            name: name.into(),
            operation: Operation::Read,
            permission: Permission::Allow,
        }
    }

    fn filter(resource: i8, name: Option<&str>, pattern: i8) -> Filter {
        let name = name.map(|n| StrBytes::from_string(n.into()));
        Filter::new(resource, name.as_ref(), pattern, None, None, ANY, ANY).unwrap()
    }

    #[test]
    fn filters_match_as_kafkas_do() {
        let lit = rule(ResourceType::Topic, PatternType::Literal, "orders");
        let star = rule(ResourceType::Topic, PatternType::Literal, "*");
        let pre = rule(ResourceType::Topic, PatternType::Prefixed, "ord");
        let cluster = rule(ResourceType::Cluster, PatternType::Literal, "*");
        let pipeline = rule(ResourceType::Pipeline, PatternType::Literal, "p");
        let all = filter(ANY, None, ANY);
        assert!([&lit, &star, &pre, &cluster].iter().all(|a| all.matches(a)));
        assert!(!all.matches(&pipeline), "pipelines are not Kafka's");
        let exact = filter(2, Some("orders"), ANY);
        assert!(exact.matches(&lit) && !exact.matches(&star) && !exact.matches(&pre));
        let matching = filter(2, Some("orders"), MATCH);
        assert!(matching.matches(&lit) && matching.matches(&star) && matching.matches(&pre));
        let prefixed = filter(2, None, PREFIXED);
        assert!(prefixed.matches(&pre) && !prefixed.matches(&lit));
        let kafka_cluster = filter(4, Some(KAFKA_CLUSTER), LITERAL);
        assert!(kafka_cluster.matches(&cluster) && !kafka_cluster.matches(&lit));
        // Of any type, `kafka-cluster` is weir's `*` for the cluster only: a topic rule
        // named `*` is not one named `kafka-cluster`.
        let any_named = filter(ANY, Some(KAFKA_CLUSTER), ANY);
        assert!(any_named.matches(&cluster) && !any_named.matches(&star));
        let named_topic = rule(ResourceType::Topic, PatternType::Literal, KAFKA_CLUSTER);
        assert!(any_named.matches(&named_topic));
        // Another host than * matches nothing: every rule is for *.
        let host = StrBytes::from_static_str("10.0.0.1");
        let f = Filter::new(ANY, None, ANY, None, Some(&host), ANY, ANY).unwrap();
        assert!(!f.matches(&lit));
        assert!(Filter::new(5, None, ANY, None, None, ANY, ANY).is_err());
        assert!(Filter::new(ANY, None, 9, None, None, ANY, ANY).is_err());
    }

    #[test]
    fn creations_weir_cannot_hold_are_refused_by_name() {
        use kafka_protocol::messages::create_acls_request::AclCreation;
        let ok = AclCreation::default()
            .with_resource_type(4)
            .with_resource_name(StrBytes::from_static_str(KAFKA_CLUSTER))
            .with_resource_pattern_type(LITERAL)
            .with_principal(StrBytes::from_static_str("User:alice"))
            .with_host(StrBytes::from_static_str("*"))
            .with_operation(5)
            .with_permission_type(3);
        let a = creation(&ok).unwrap();
        assert_eq!((a.resource, a.name.as_str()), (ResourceType::Cluster, "*"));
        for (bad, why) in [
            (
                ok.clone().with_host(StrBytes::from_static_str("10.0.0.1")),
                "every host",
            ),
            (ok.clone().with_resource_type(5), "transactional"),
            (ok.clone().with_operation(12), "operation 12"),
            (ok.clone().with_operation(10), "DESCRIBE_CONFIGS"),
            (ok.clone().with_permission_type(1), "permission type 1"),
            (ok.clone().with_resource_pattern_type(2), "pattern type 2"),
            (
                ok.clone()
                    .with_principal(StrBytes::from_static_str("alice")),
                "User:NAME",
            ),
        ] {
            let e = creation(&bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}

//! What one authorization check costs a request: a decision already cached for the
//! connection (what every request after the first on a connection pays), one made from the
//! rules (1,000 rules of other users scanned, then the user's own), and a server without
//! ACLs, side by side.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir_auth::acl::{Acl, AclFile, Authorizer, Operation, PatternType, Permission, ResourceType};
use weir_broker::Access;
use weir_broker::access::Principal;

const RULES: usize = 1000;

fn rule(principal: &str, name: &str, operation: Operation) -> Acl {
    Acl {
        principal: principal.into(),
        resource: ResourceType::Topic,
        pattern: PatternType::Literal,
        name: name.into(),
        operation,
        permission: Permission::Allow,
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acls.json");
    AclFile::edit(&path, |f| {
        for i in 0..RULES {
            f.acls.push(rule(
                &format!("User:u{i}"),
                &format!("t{i}"),
                Operation::Write,
            ));
        }
        f.acls.push(rule("User:alice", "orders", Operation::Write));
        Ok(())
    })
    .unwrap();
    let rules = Arc::new(Authorizer::open(path, Vec::new()).unwrap());
    let alice = Principal::user("alice");
    let mut g = c.benchmark_group("acl check");
    let access = Access::new(alice.clone(), Some(Arc::clone(&rules)));
    assert!(access.allows(Operation::Write, ResourceType::Topic, "orders"));
    g.bench_function("cached decision (every request after the first)", |b| {
        b.iter(|| access.allows(Operation::Write, ResourceType::Topic, black_box("orders")))
    });
    g.bench_function("decision from 1,001 rules (first request)", |b| {
        b.iter(|| {
            rules.allows(
                &alice,
                Operation::Write,
                ResourceType::Topic,
                black_box("orders"),
            )
        })
    });
    let open = Access::unchecked(alice.clone());
    g.bench_function("no ACLs", |b| {
        b.iter(|| open.allows(Operation::Write, ResourceType::Topic, black_box("orders")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

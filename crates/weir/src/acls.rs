//! `weir acl add | remove | list`: edits the access control lists the server authorizes
//! requests by (`[auth] acls = true`). Like `weir user`, it works on the file directly, with
//! or without the server running; the server reads the file again when it changes (within
//! 2 s), and open connections drop their cached decisions then.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use weir_auth::acl::{Acl, AclFile, Operation, PatternType, Permission, ResourceType};

#[derive(Subcommand)]
pub enum AclCmd {
    /// Add a rule (deny wins over allow; what no rule allows is refused).
    Add(RuleArgs),
    /// Remove a rule, given exactly as it was added.
    Remove(RuleArgs),
    /// List the rules.
    List {
        /// Only the rules of this principal (`User:NAME`).
        #[arg(long)]
        principal: Option<String>,
        #[command(flatten)]
        file: FileArgs,
    },
}

#[derive(Args)]
pub struct RuleArgs {
    /// Whom the rule is for: `User:NAME`, or `User:*` for every authenticated user.
    #[arg(long)]
    principal: String,
    /// The kind of resource: topic, group, cluster, pipeline.
    #[arg(long, value_parser = parse_resource)]
    resource: ResourceType,
    /// The resource's name (`*` for every one; the cluster is `*`).
    #[arg(long, default_value = "*")]
    name: String,
    /// Match every name that starts with --name, instead of the name itself.
    #[arg(long)]
    prefixed: bool,
    /// What it may (or may not) do: all, read, write, create, delete, describe, alter.
    #[arg(long, value_parser = parse_operation)]
    operation: Operation,
    /// A rule that refuses instead of allowing.
    #[arg(long)]
    deny: bool,
    #[command(flatten)]
    file: FileArgs,
}

fn parse_resource(s: &str) -> Result<ResourceType, String> {
    ResourceType::parse(s).ok_or_else(|| format!("{s:?}: one of topic, group, cluster, pipeline"))
}

fn parse_operation(s: &str) -> Result<Operation, String> {
    Operation::parse(s)
        .ok_or_else(|| format!("{s:?}: one of all, read, write, create, delete, describe, alter"))
}

impl RuleArgs {
    fn acl(&self) -> Acl {
        Acl {
            principal: self.principal.clone(),
            resource: self.resource,
            pattern: if self.prefixed {
                PatternType::Prefixed
            } else {
                PatternType::Literal
            },
            name: self.name.clone(),
            operation: self.operation,
            permission: if self.deny {
                Permission::Deny
            } else {
                Permission::Allow
            },
        }
    }
}

/// Which ACL file: the server's (its configuration says where), or one named.
#[derive(Args)]
pub struct FileArgs {
    /// The server's configuration file: its `auth.acls_file`, or `<data_dir>/auth/acls.json`.
    #[arg(long, short, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// The ACL file itself (instead of the configuration's).
    #[arg(long, conflicts_with = "config")]
    acls_file: Option<PathBuf>,
}

impl FileArgs {
    fn path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.acls_file {
            return Ok(p.clone());
        }
        let config = crate::config::Config::load(self.config.as_deref(), std::env::vars())?;
        Ok(config.acls_file())
    }
}

/// One rule as a line of `weir acl list`.
fn line(a: &Acl) -> String {
    let pattern = match a.pattern {
        PatternType::Literal => "literal",
        PatternType::Prefixed => "prefixed",
    };
    let permission = match a.permission {
        Permission::Allow => "allow",
        Permission::Deny => "deny",
    };
    format!(
        "{permission:<5}  {:<20}  {:<9} {:<8} {:<30}  {}",
        a.principal,
        a.operation.name(),
        a.resource.name(),
        a.name,
        pattern
    )
}

pub fn run(cmd: AclCmd) -> Result<()> {
    match cmd {
        AclCmd::Add(rule) => {
            let path = rule.file.path()?;
            let acl = rule.acl();
            acl.check().map_err(anyhow::Error::msg)?;
            let added = AclFile::edit(&path, |f| {
                if f.acls.contains(&acl) {
                    return Ok(false);
                }
                f.acls.push(acl.clone());
                Ok(true)
            })?;
            if added {
                println!("added: {}", line(&acl));
            } else {
                println!("already there: {}", line(&acl));
            }
            Ok(())
        }
        AclCmd::Remove(rule) => {
            let path = rule.file.path()?;
            let acl = rule.acl();
            let removed = AclFile::edit(&path, |f| {
                let before = f.acls.len();
                f.acls.retain(|a| *a != acl);
                Ok(before != f.acls.len())
            })?;
            if !removed {
                bail!("no such rule in {}: {}", path.display(), line(&acl));
            }
            println!("removed: {}", line(&acl));
            Ok(())
        }
        AclCmd::List { principal, file } => {
            let path = file.path()?;
            let acls = AclFile::load(&path)?;
            let shown: Vec<&Acl> = acls
                .acls
                .iter()
                .filter(|a| principal.as_ref().is_none_or(|p| a.principal == *p))
                .collect();
            if shown.is_empty() {
                eprintln!("no rules in {}", path.display());
                return Ok(());
            }
            println!(
                "{:<5}  {:<20}  {:<9} {:<8} {:<30}  PATTERN",
                "PERM", "PRINCIPAL", "OPERATION", "RESOURCE", "NAME"
            );
            for a in shown {
                println!("{}", line(a));
            }
            Ok(())
        }
    }
}

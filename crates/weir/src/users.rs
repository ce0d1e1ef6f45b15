//! `weir user add | remove | token | list`: edits the users file the server authenticates clients
//! against (`[auth]`). It works on the file directly, with or without the server running: the
//! server reads the file again when it changes (within 2 s), so an added user can log in and
//! a removed one cannot open new connections (open ones stay until they close).

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use weir_auth::users::{StoreError, check_name};
use weir_auth::{DEFAULT_ITERATIONS, User, UserFile};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user. Its password is generated and printed once, or read from standard input
    /// (--password-stdin); only salted, iterated SCRAM credentials are stored.
    Add {
        name: String,
        /// Read the password from the first line of standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
        /// Give an existing user a new password (open connections keep theirs).
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Remove a user: no new connection can authenticate as it.
    Remove {
        name: String,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Make an API token for a user (HTTP's `Authorization: Bearer`), printed once; only its
    /// hash is stored. With --revoke ID, remove one instead.
    Token {
        name: String,
        /// The id of a token to remove (`weir user list --tokens` shows them).
        #[arg(long)]
        revoke: Option<String>,
        #[command(flatten)]
        file: FileArgs,
    },
    /// List the users.
    List {
        /// Show each user's API tokens (their ids and creation times).
        #[arg(long)]
        tokens: bool,
        #[command(flatten)]
        file: FileArgs,
    },
}

/// Which users file: the server's (its configuration says where), or one named.
#[derive(Args)]
pub struct FileArgs {
    /// The server's configuration file: its `auth.users_file`, or `<data_dir>/auth/users.json`.
    #[arg(long, short, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// The users file itself (instead of the configuration's).
    #[arg(long, conflicts_with = "config")]
    users_file: Option<PathBuf>,
}

impl FileArgs {
    fn path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.users_file {
            return Ok(p.clone());
        }
        let config = crate::config::Config::load(self.config.as_deref(), std::env::vars())?;
        Ok(config.users_file())
    }
}

/// Shortest password accepted from standard input.
const MIN_PASSWORD: usize = 8;

pub fn run(cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Add {
            name,
            password_stdin,
            replace,
            file,
        } => {
            check_name(&name).map_err(anyhow::Error::msg)?;
            let path = file.path()?;
            let (password, generated) = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                let password = line.trim_end_matches(['\r', '\n']).to_string();
                if password.chars().count() < MIN_PASSWORD {
                    bail!("a password has at least {MIN_PASSWORD} characters");
                }
                (password, false)
            } else {
                (weir_auth::generate_password(), true)
            };
            let user = User::with_password(&password, DEFAULT_ITERATIONS);
            UserFile::edit(&path, |f| {
                if f.users.contains_key(&name) && !replace {
                    return Err(StoreError::Refused(format!(
                        "user {name:?} exists: --replace gives it a new password"
                    )));
                }
                // A new password keeps the user's API tokens.
                let mut user = user;
                if let Some(old) = f.users.get(&name) {
                    user.tokens = old.tokens.clone();
                }
                f.users.insert(name.clone(), user);
                Ok(())
            })?;
            if generated {
                println!("added user {name}; its password (shown once): {password}");
            } else {
                println!("added user {name}");
            }
            eprintln!("users file: {}", path.display());
        }
        UserCmd::Remove { name, file } => {
            // Its API tokens go with it.
            let path = file.path()?;
            UserFile::edit(&path, |f| {
                f.users
                    .remove(&name)
                    .map(|_| ())
                    .ok_or_else(|| StoreError::Refused(format!("no user {name:?}")))
            })?;
            println!("removed user {name}");
        }
        UserCmd::Token { name, revoke, file } => {
            let path = file.path()?;
            match revoke {
                Some(id) => {
                    UserFile::edit(&path, |f| {
                        let user = f
                            .users
                            .get_mut(&name)
                            .ok_or_else(|| StoreError::Refused(format!("no user {name:?}")))?;
                        let before = user.tokens.len();
                        user.tokens.retain(|t| t.id != id);
                        if user.tokens.len() == before {
                            return Err(StoreError::Refused(format!(
                                "user {name:?} has no token {id:?}"
                            )));
                        }
                        Ok(())
                    })?;
                    println!("revoked token {id} of user {name}");
                }
                None => {
                    let (token, stored) = weir_auth::users::new_token();
                    let id = stored.id.clone();
                    UserFile::edit(&path, |f| {
                        f.users
                            .get_mut(&name)
                            .ok_or_else(|| StoreError::Refused(format!("no user {name:?}")))?
                            .tokens
                            .push(stored);
                        Ok(())
                    })?;
                    println!("token {id} of user {name} (shown once): {token}");
                }
            }
        }
        UserCmd::List { tokens, file } => {
            let path = file.path()?;
            let f = UserFile::load(&path)?;
            println!("{:<32} {:<31} TOKENS", "USER", "ADDED");
            for (name, user) in &f.users {
                println!(
                    "{name:<32} {:<31} {}",
                    added(user.created_ms),
                    user.tokens.len()
                );
                if tokens {
                    for t in &user.tokens {
                        println!("  token {} added {}", t.id, added(t.created_ms));
                    }
                }
            }
            eprintln!("{} users in {}", f.users.len(), path.display());
        }
    }
    Ok(())
}

/// A creation time, as HTTP dates read (`Sun, 06 Dec 2026 19:40:00 GMT`).
fn added(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    #[test]
    fn creation_times_read_as_dates() {
        assert_eq!(super::added(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            super::added(1_765_000_000_000),
            "Sat, 06 Dec 2025 05:46:40 GMT"
        );
    }
}

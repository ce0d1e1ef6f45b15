//! The user store: one JSON file (by default `<data_dir>/auth/users.json`) holding, per user,
//! salted and iterated SCRAM credentials — never a password. `weir user add|remove|list`
//! edits it (under a lock file, written to a temporary file, synced and renamed, so that a
//! reader sees the old file or the new one); the server only reads it, again when it
//! changes.
//!
//! ```json
//! {"version": 1, "users": {"alice": {
//!     "created_ms": 1765000000000,
//!     "scram_sha_256": {"salt": "…", "iterations": 4096, "stored_key": "…", "server_key": "…"},
//!     "scram_sha_512": {"salt": "…", "iterations": 4096, "stored_key": "…", "server_key": "…"},
//!     "tokens": [{"id": "3f2a9c1e", "sha256": "…", "created_ms": 1765000000000}]}}}
//! ```
//!
//! API tokens (for the HTTP door's `Authorization: Bearer`) are kept as the SHA-256 of the
//! token: a token is 32 random bytes, so a hash that cannot be reversed by guessing is enough,
//! and looking one up costs one hash per request (no per-token salt or iterations).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::credentials::{ScramCredential, ScramHash};
pub use crate::store::StoreError;
use crate::store::{Stamp, stamp};

/// The format written; a file of another version is refused.
pub const VERSION: u32 = 1;
/// Longest user name.
pub const MAX_NAME: usize = 128;

/// The users file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFile {
    pub version: u32,
    pub users: BTreeMap<String, User>,
}

/// One user's credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// When the user was added (ms since the Unix epoch).
    pub created_ms: u64,
    pub scram_sha_256: ScramCredential,
    pub scram_sha_512: ScramCredential,
    /// API tokens, by hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<ApiToken>,
}

/// An API token of a user, as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Names the token in listings and revocations: the first 8 hex digits of its hash.
    pub id: String,
    /// SHA-256 of the token, in hex.
    pub sha256: String,
    pub created_ms: u64,
}

/// What every API token starts with, so that a door tells one from a JWT at a glance.
pub const TOKEN_PREFIX: &str = "weir_";

/// SHA-256 of `token`, in hex.
pub fn token_hash(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new API token (`weir_` and 43 characters of URL-safe base64: 256 bits), and what is
/// stored of it.
pub fn new_token() -> (String, ApiToken) {
    use base64::Engine;
    let mut raw = [0u8; 32];
    crate::random(&mut raw);
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let sha256 = token_hash(&token);
    let stored = ApiToken {
        id: sha256[..8].to_string(),
        sha256,
        created_ms: now_ms(),
    };
    (token, stored)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl User {
    /// A user whose password is `password`, with fresh salts.
    pub fn with_password(password: &str, iterations: u32) -> Self {
        Self {
            created_ms: now_ms(),
            scram_sha_256: ScramCredential::new(ScramHash::Sha256, password, iterations),
            scram_sha_512: ScramCredential::new(ScramHash::Sha512, password, iterations),
            tokens: Vec::new(),
        }
    }

    pub fn credential(&self, hash: ScramHash) -> &ScramCredential {
        match hash {
            ScramHash::Sha256 => &self.scram_sha_256,
            ScramHash::Sha512 => &self.scram_sha_512,
        }
    }
}

/// Checks a user name: 1 to 128 of letters, digits and `.`, `_`, `-`, `@` (so that it reads
/// the same in an ACL's `User:NAME` and in a log line).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("a user name has 1 to {MAX_NAME} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(format!(
            "user name {name:?}: {c:?} is not a letter, digit, '.', '_', '-' or '@'"
        ));
    }
    Ok(())
}

impl crate::store::JsonFile for UserFile {
    const WHAT: &'static str = "users file";

    fn empty() -> Self {
        Self {
            version: VERSION,
            users: BTreeMap::new(),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "version {} (this weir reads version {VERSION})",
                self.version
            ));
        }
        for (name, user) in &self.users {
            check_name(name)?;
            for hash in [ScramHash::Sha256, ScramHash::Sha512] {
                user.credential(hash)
                    .check(hash)
                    .map_err(|e| format!("user {name:?}: {e}"))?;
            }
            for t in &user.tokens {
                let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
                if t.sha256.len() != 64 || !hex(&t.sha256) || !t.sha256.starts_with(&t.id) {
                    return Err(format!("user {name:?}: token {:?} is not a SHA-256", t.id));
                }
            }
        }
        Ok(())
    }
}

impl UserFile {
    /// Reads the file at `path`; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        crate::store::load(path)
    }

    /// Applies `change` to the file at `path` under its lock file (`<path>.lock`, say
    /// `users.json.lock`), then writes it whole: a temporary file, synced, renamed over, the
    /// directory synced.
    pub fn edit<T>(
        path: &Path,
        change: impl FnOnce(&mut UserFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        crate::store::edit(path, change)
    }
}

/// The users a running server knows: the file as last read, read again when it changes.
#[derive(Debug)]
pub struct UserStore {
    path: PathBuf,
    users: RwLock<(Stamp, Arc<Known>)>,
}

/// The users file as read: users by name, and their tokens' hashes.
#[derive(Debug, Default)]
struct Known {
    users: BTreeMap<String, User>,
    tokens: std::collections::HashMap<String, String>,
}

impl Known {
    fn from(file: UserFile) -> Self {
        let tokens = file
            .users
            .iter()
            .flat_map(|(name, u)| u.tokens.iter().map(|t| (t.sha256.clone(), name.clone())))
            .collect();
        Self {
            users: file.users,
            tokens,
        }
    }
}

impl UserStore {
    /// Reads the users file at `path` (missing: no users yet).
    pub fn open(path: PathBuf) -> Result<Self, StoreError> {
        let before = stamp(&path);
        let file = UserFile::load(&path)?;
        Ok(Self {
            path,
            users: RwLock::new((before, Arc::new(Known::from(file)))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The user named `name`.
    pub fn get(&self, name: &str) -> Option<User> {
        self.users.read().1.users.get(name).cloned()
    }

    /// The user an API token is of.
    pub fn by_token(&self, token: &str) -> Option<String> {
        let hash = token_hash(token);
        self.users.read().1.tokens.get(&hash).cloned()
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.read().1.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the file again if it changed since it was last read; says whether it did. A
    /// file that cannot be read or is invalid keeps the users in force and returns why.
    pub fn reload_if_changed(&self) -> Result<bool, StoreError> {
        let now = stamp(&self.path);
        if now == self.users.read().0 {
            return Ok(false);
        }
        self.reload_at(now).map(|_| true)
    }

    /// Reads the file again.
    pub fn reload(&self) -> Result<(), StoreError> {
        self.reload_at(stamp(&self.path))
    }

    fn reload_at(&self, at: Stamp) -> Result<(), StoreError> {
        let file = UserFile::load(&self.path)?;
        *self.users.write() = (at, Arc::new(Known::from(file)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_are_read_back_and_reloaded_by_a_running_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/users.json");
        let store = UserStore::open(path.clone()).unwrap();
        assert!(store.is_empty());
        UserFile::edit(&path, |f| {
            f.users
                .insert("alice".into(), User::with_password("s3cret", 4096));
            Ok(())
        })
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(store.reload_if_changed().unwrap());
        assert!(!store.reload_if_changed().unwrap());
        let alice = store.get("alice").unwrap();
        assert!(alice.scram_sha_256.verify(ScramHash::Sha256, "s3cret"));
        assert!(alice.scram_sha_512.verify(ScramHash::Sha512, "s3cret"));
        UserFile::edit(&path, |f| {
            f.users.remove("alice");
            Ok(())
        })
        .unwrap();
        assert!(store.reload_if_changed().unwrap());
        assert!(store.get("alice").is_none());
    }

    #[test]
    fn a_bad_file_is_refused_and_keeps_the_users_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        UserFile::edit(&path, |f| {
            f.users
                .insert("bob".into(), User::with_password("pw", 4096));
            Ok(())
        })
        .unwrap();
        let store = UserStore::open(path.clone()).unwrap();
        for (bad, why) in [
            ("{", "EOF"),
            (r#"{"version": 2, "users": {}}"#, "version 2"),
            (r#"{"version": 1, "users": {}, "extra": 1}"#, "extra"),
            (r#"{"version": 1, "users": {"a b": {}}}"#, "missing field"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = store.reload().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(store.get("bob").is_some());
            assert!(UserFile::load(&path).is_err());
        }
        // A user whose credential was tampered with to cost too much.
        let mut file = UserFile {
            version: VERSION,
            ..UserFile::default()
        };
        let mut u = User::with_password("pw", 4096);
        u.scram_sha_512.iterations = u32::MAX;
        file.users.insert("eve".into(), u);
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let err = UserFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("iterations"), "{err}");
    }

    #[test]
    fn tokens_are_found_by_their_hash_and_gone_once_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let (token, stored) = new_token();
        assert!(
            token.starts_with(TOKEN_PREFIX) && token.len() == 48,
            "{token}"
        );
        UserFile::edit(&path, |f| {
            let mut u = User::with_password("pw", 4096);
            u.tokens.push(stored.clone());
            f.users.insert("carol".into(), u);
            Ok(())
        })
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token[5..]));
        let store = UserStore::open(path.clone()).unwrap();
        assert_eq!(store.by_token(&token).as_deref(), Some("carol"));
        assert_eq!(store.by_token(&format!("{token}x")), None);
        UserFile::edit(&path, |f| {
            f.users.get_mut("carol").unwrap().tokens.clear();
            Ok(())
        })
        .unwrap();
        store.reload().unwrap();
        assert_eq!(store.by_token(&token), None);
        // A file written before tokens existed still reads.
        std::fs::write(&path, text.replace("\"tokens\"", "\"tokenz\"")).unwrap();
        assert!(UserFile::load(&path).is_err());
        let mut f = UserFile::load(&path.with_file_name("none.json")).unwrap();
        f.users
            .insert("dave".into(), User::with_password("pw", 4096));
        std::fs::write(&path, serde_json::to_vec(&f).unwrap()).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("tokens"));
        UserFile::load(&path).unwrap();
    }

    #[test]
    fn names_are_checked() {
        check_name("alice.smith@example-1_x").unwrap();
        for bad in ["", "a b", "a:b", "ü", &"x".repeat(129), "a\n"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}

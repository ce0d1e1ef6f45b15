//! Authentication for every front door, sans I/O: who a client is, checked against the
//! server's user store.
//!
//! Layout:
//! - [`credentials`]: salted, iterated SCRAM credentials (RFC 5802), what is stored instead
//!   of a password.
//! - [`users`]: the users file (`weir user add|remove|list` edits it, the server reads it
//!   again when it changes) and [`UserStore`], the users a server knows.
//! - [`acl`]: access control lists (Kafka's model) and the [`acl::Authorizer`] that decides
//!   by them; not wired to the doors yet.
//! - [`jwt`]: JSON Web Tokens (HS256, RS256, ES256) for the HTTP door; API tokens live in the
//!   users file.
//! - [`scram`]: the server side of a SCRAM-SHA-256/512 exchange; [`scram_client`]: the
//!   client side, for weir's own client; [`plain`]: SASL PLAIN.
//! - This file: [`Principal`], [`Mechanism`], and [`Auth`], what a door asks: start a SASL
//!   exchange, take its steps, and the limit on failed attempts per client address that all
//!   doors share (a client over it is refused before any credential is looked at).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use weir_flow::keyed::{KeyedConfig, KeyedLimiter};
use weir_flow::limiter::{Gcra, Rate};

pub mod acl;
pub mod credentials;
pub mod jwt;
pub mod plain;
pub mod scram;
pub mod scram_client;
mod store;
pub mod users;

pub use credentials::{DEFAULT_ITERATIONS, ScramCredential, ScramHash};
pub use store::StoreError;
pub use users::{User, UserFile, UserStore};

/// Metric: authentication attempts by door, mechanism and result (`ok`, `failed`,
/// `malformed`, `limited`).
pub const METRIC_ATTEMPTS: &str = "weir_auth_attempts_total";

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// Nobody in particular: the server runs without authentication.
    Anonymous,
    /// A user of the store.
    User(Arc<str>),
}

impl Principal {
    pub fn user(name: &str) -> Self {
        Principal::User(name.into())
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("User:ANONYMOUS"),
            Principal::User(name) => write!(f, "User:{name}"),
        }
    }
}

/// SASL mechanisms served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::ScramSha256,
        Mechanism::ScramSha512,
    ];

    /// The IANA name clients ask for.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Why an authentication did not succeed. The message given to clients never says whether
/// the user exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password.
    #[error("authentication failed: invalid credentials")]
    Failed,
    /// The client's message does not follow the mechanism.
    #[error("malformed credentials: {0}")]
    Malformed(String),
    /// The mechanism is not one enabled.
    #[error("SASL mechanism {0:?} is not enabled")]
    UnsupportedMechanism(String),
    /// A message out of order.
    #[error("{0}")]
    IllegalState(String),
    /// Too many failed attempts from the client's address lately.
    #[error("too many failed authentications from this address: try again in {0:?}")]
    Limited(Duration),
}

/// Largest SASL message taken (a SCRAM or PLAIN message is well under 1 KiB).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Settings of [`Auth`].
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Mechanisms offered, in the order offered.
    pub mechanisms: Vec<Mechanism>,
    /// Failed attempts one address may make in a burst before being refused…
    pub failures_burst: u32,
    /// …and how many more it is allowed per minute after that.
    pub failures_per_minute: u32,
    /// A connection not authenticated this long after it opened is closed.
    pub timeout: Duration,
    /// JWT keys for bearer tokens, if any.
    pub jwt: Option<Arc<jwt::Jwt>>,
    /// The access control lists, when requests are authorized (else every authenticated
    /// client may do everything).
    pub acls: Option<Arc<acl::Authorizer>>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mechanisms: Mechanism::ALL.to_vec(),
            failures_burst: 10,
            failures_per_minute: 10,
            timeout: Duration::from_secs(10),
            jwt: None,
            acls: None,
        }
    }
}

/// What a server checks clients against: its users, the mechanisms on offer, and the
/// failed-attempt limit per address. Shared by every door.
pub struct Auth {
    users: UserStore,
    config: AuthConfig,
    failures: KeyedLimiter<IpAddr, Gcra>,
    /// Key of the salts made up for unknown users: stable within a process, so that asking
    /// twice for the same unknown user gets the same salt, as for a real one.
    fake_salt_key: ring::hmac::Key,
    /// Turns for steps on the blocking threads (see [`Auth::step_async`]).
    blocking: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("users", &self.users)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(users: UserStore, config: AuthConfig) -> Self {
        let rate = Rate::new(
            u64::from(config.failures_per_minute.max(1)),
            Duration::from_secs(60),
        );
        let failures = KeyedLimiter::new(
            Gcra::new(rate, config.failures_burst.max(1)),
            KeyedConfig {
                max_keys: 100_000,
                idle_timeout: Duration::from_secs(600),
                ..KeyedConfig::default()
            },
        );
        let mut secret = [0u8; 32];
        random(&mut secret);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            users,
            config,
            failures,
            fake_salt_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            blocking: tokio::sync::Semaphore::new(cpus.max(2)),
        }
    }

    /// How long a connection has to authenticate.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    pub fn users(&self) -> &UserStore {
        &self.users
    }

    /// The access control lists, when requests are authorized.
    pub fn acls(&self) -> Option<&Arc<acl::Authorizer>> {
        self.config.acls.as_ref()
    }

    /// The mechanisms offered, by name, in order.
    pub fn mechanism_names(&self) -> Vec<&'static str> {
        self.config.mechanisms.iter().map(|m| m.name()).collect()
    }

    /// Starts an exchange with `mechanism` (as the client named it) for a client at `peer`:
    /// refused if the mechanism is not offered or the address is over its failure limit.
    pub fn start(&self, mechanism: &str, peer: Option<IpAddr>) -> Result<Sasl, AuthError> {
        let m = Mechanism::parse(mechanism)
            .filter(|m| self.config.mechanisms.contains(m))
            .ok_or_else(|| AuthError::UnsupportedMechanism(mechanism.to_string()))?;
        if let Some(ip) = peer {
            let wait = self.failures.time_until_ready(&ip, 1);
            if !wait.is_zero() {
                return Err(AuthError::Limited(wait));
            }
        }
        let state = match m {
            Mechanism::Plain => SaslState::Plain,
            Mechanism::ScramSha256 => {
                SaslState::Scram(Box::new(scram::ScramServer::new(ScramHash::Sha256)))
            }
            Mechanism::ScramSha512 => {
                SaslState::Scram(Box::new(scram::ScramServer::new(ScramHash::Sha512)))
            }
        };
        Ok(Sasl {
            mechanism: m,
            peer,
            state,
        })
    }

    /// Takes the client's next message of `sasl`. A failure is charged to the client's
    /// address. PLAIN derives a key (thousands of hash rounds): call from a blocking thread.
    pub fn step(&self, sasl: &mut Sasl, message: &[u8]) -> Result<SaslStep, AuthError> {
        let result = if message.len() > MAX_MESSAGE_BYTES {
            Err(AuthError::Malformed(format!(
                "a SASL message of {} bytes (at most {MAX_MESSAGE_BYTES})",
                message.len()
            )))
        } else {
            match &mut sasl.state {
                SaslState::Plain => {
                    sasl.state = SaslState::Done;
                    plain::authenticate(message, |name| self.users.get(name))
                        .map(|p| SaslStep::Done(p, Vec::new()))
                }
                SaslState::Scram(server) => {
                    let hash = match sasl.mechanism {
                        Mechanism::ScramSha512 => ScramHash::Sha512,
                        _ => ScramHash::Sha256,
                    };
                    server
                        .step(
                            message,
                            |name| self.users.get(name).map(|u| u.credential(hash).clone()),
                            |name| self.fake_salt(name),
                        )
                        .map(|s| match s {
                            scram::ScramStep::Challenge(c) => SaslStep::Challenge(c),
                            scram::ScramStep::Done(p, last) => SaslStep::Done(p, last),
                        })
                }
                SaslState::Done => Err(AuthError::IllegalState("the SASL exchange is over".into())),
            }
        };
        if result.is_err() {
            sasl.state = SaslState::Done;
            if let Some(ip) = sasl.peer {
                // Charged whether or not the limit lets it through: refusal happens at
                // the next start.
                let _ = self.failures.try_acquire(&ip, 1);
            }
        }
        result
    }

    /// [`Auth::step`] on a blocking thread (a PLAIN login derives a key: thousands of hash
    /// rounds), at most one per CPU at once across the server: a flood of logins waits its
    /// turn instead of taking every blocking thread.
    pub async fn step_async(
        self: &Arc<Self>,
        mut sasl: Sasl,
        message: impl AsRef<[u8]> + Send + 'static,
    ) -> Result<(Sasl, SaslStep), AuthError> {
        let _turn = self
            .blocking
            .acquire()
            .await
            .map_err(|_| AuthError::IllegalState("authentication is closed".into()))?;
        let auth = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let step = auth.step(&mut sasl, message.as_ref())?;
            Ok((sasl, step))
        })
        .await
        .map_err(|e| AuthError::IllegalState(format!("the authentication task failed: {e}")))?
    }

    /// A door's step of an exchange: `started` (an exchange under way, or why none could
    /// start with the `requested` mechanism) takes the client's `message`. The end of the exchange is recorded (counted and
    /// logged, [`Auth::record`]) and a failure answered [`FAILURE_DELAY`] late; a challenge
    /// hands the exchange back for the client's next message.
    pub async fn exchange(
        self: &Arc<Self>,
        door: &'static str,
        peer: Option<std::net::SocketAddr>,
        requested: &str,
        started: Result<Sasl, AuthError>,
        message: impl AsRef<[u8]> + Send + 'static,
    ) -> Result<Exchanged, AuthError> {
        let mechanism = started
            .as_ref()
            .map_or(requested, |sasl| sasl.mechanism().name());
        let stepped = match started {
            Err(e) => Err(e),
            Ok(sasl) => match self.step_async(sasl, message).await {
                Ok((sasl, SaslStep::Challenge(challenge))) => {
                    return Ok(Exchanged::Continue(sasl, challenge));
                }
                Ok((_, SaslStep::Done(principal, last))) => Ok((principal, last)),
                Err(e) => Err(e),
            },
        };
        match stepped {
            Ok((principal, last)) => {
                self.record(door, mechanism, peer, &Ok(principal.clone()));
                Ok(Exchanged::Done(principal, last))
            }
            Err(e) => {
                self.record(door, mechanism, peer, &Err(e.clone()));
                tokio::time::sleep(FAILURE_DELAY).await;
                Err(e)
            }
        }
    }

    /// Checks a bearer token of a client at `peer`: a user's API token (`weir_…`), else a JWT
    /// (when keys are configured). A failure is charged to the address, and an address over
    /// its limit is refused unchecked.
    pub fn bearer(&self, token: &str, peer: Option<IpAddr>) -> Result<Principal, AuthError> {
        if let Some(ip) = peer {
            let wait = self.failures.time_until_ready(&ip, 1);
            if !wait.is_zero() {
                return Err(AuthError::Limited(wait));
            }
        }
        let result = if token.starts_with(users::TOKEN_PREFIX) {
            self.users
                .by_token(token)
                .map(|name| Principal::user(&name))
                .ok_or(AuthError::Failed)
        } else if let Some(jwt) = &self.config.jwt {
            jwt.verify(token)
        } else {
            Err(AuthError::Failed)
        };
        if result.is_err()
            && let Some(ip) = peer
        {
            let _ = self.failures.try_acquire(&ip, 1);
        }
        result
    }

    /// Counts and logs the end of an exchange on `door` (the one place both happen); the
    /// log names the user and the address, never a secret.
    pub fn record(
        &self,
        door: &'static str,
        mechanism: &str,
        peer: Option<std::net::SocketAddr>,
        outcome: &Result<Principal, AuthError>,
    ) {
        let mechanism = match mechanism {
            "token" => "token",
            "jwt" => "jwt",
            "mtls" => "mtls",
            m => Mechanism::parse(m).map_or("other", Mechanism::name),
        };
        let result = match outcome {
            Ok(_) => "ok",
            Err(AuthError::Failed) => "failed",
            Err(AuthError::Limited(_)) => "limited",
            Err(_) => "malformed",
        };
        metrics::counter!(METRIC_ATTEMPTS, "door" => door, "mechanism" => mechanism, "result" => result)
            .increment(1);
        match outcome {
            Ok(p) => tracing::debug!(door, mechanism, ?peer, principal = %p, "authenticated"),
            Err(e) => tracing::info!(door, mechanism, ?peer, error = %e, "authentication refused"),
        }
    }

    fn fake_salt(&self, name: &str) -> Vec<u8> {
        let tag = ring::hmac::sign(&self.fake_salt_key, name.as_bytes());
        tag.as_ref()[..24].to_vec()
    }
}

/// One SASL exchange in progress.
#[derive(Debug)]
pub struct Sasl {
    mechanism: Mechanism,
    peer: Option<IpAddr>,
    state: SaslState,
}

impl Sasl {
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }
}

#[derive(Debug)]
enum SaslState {
    Plain,
    Scram(Box<scram::ScramServer>),
    Done,
}

/// A failed authentication is answered this late (Kafka's
/// `connection.failed.authentication.delay.ms` default), which slows a password guesser on
/// top of the per-address limit.
pub const FAILURE_DELAY: Duration = Duration::from_millis(100);

/// Where [`Auth::exchange`] left an exchange.
#[derive(Debug)]
pub enum Exchanged {
    /// The client is sent these bytes and answers; the exchange goes on.
    Continue(Sasl, Vec<u8>),
    /// Authenticated as the principal; the bytes (maybe none) go to the client.
    Done(Principal, Vec<u8>),
}

/// What the client is sent after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslStep {
    /// More is needed: this goes to the client, which answers.
    Challenge(Vec<u8>),
    /// Authenticated as the principal; the bytes (maybe none) go to the client.
    Done(Principal, Vec<u8>),
}

/// A new random password (32 characters of URL-safe base64: 192 bits).
pub fn generate_password() -> String {
    use base64::Engine;
    let mut raw = [0u8; 24];
    random(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Fills `buf` from the system's secure random source.
pub(crate) fn random(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system's random source works");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(dir: &std::path::Path, config: AuthConfig) -> Auth {
        let path = dir.join("users.json");
        UserFile::edit(&path, |f| {
            f.users
                .insert("alice".into(), User::with_password("pw-alice", 4096));
            Ok(())
        })
        .unwrap();
        Auth::new(UserStore::open(path).unwrap(), config)
    }

    #[test]
    fn plain_logs_in_and_failures_from_one_address_are_limited() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(
            dir.path(),
            AuthConfig {
                failures_burst: 3,
                failures_per_minute: 1,
                ..AuthConfig::default()
            },
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut s = auth.start("PLAIN", Some(ip)).unwrap();
        assert_eq!(
            auth.step(&mut s, b"\0alice\0pw-alice"),
            Ok(SaslStep::Done(Principal::user("alice"), Vec::new()))
        );
        assert!(matches!(
            auth.step(&mut s, b"\0alice\0pw-alice"),
            Err(AuthError::IllegalState(_))
        ));
        // The IllegalState above was one failure; two more wrong passwords fill the burst.
        for _ in 0..2 {
            let mut s = auth.start("PLAIN", Some(ip)).unwrap();
            assert_eq!(auth.step(&mut s, b"\0alice\0nope"), Err(AuthError::Failed));
        }
        assert!(matches!(
            auth.start("PLAIN", Some(ip)),
            Err(AuthError::Limited(_))
        ));
        // Another address is not held back, nor a client without one (in-process).
        auth.start("PLAIN", Some("10.0.0.2".parse().unwrap()))
            .unwrap();
        auth.start("SCRAM-SHA-512", None).unwrap();
    }

    #[test]
    fn only_offered_mechanisms_start() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(
            dir.path(),
            AuthConfig {
                mechanisms: vec![Mechanism::ScramSha512],
                ..AuthConfig::default()
            },
        );
        assert_eq!(auth.mechanism_names(), ["SCRAM-SHA-512"]);
        for m in ["PLAIN", "SCRAM-SHA-256", "GSSAPI", "OAUTHBEARER", ""] {
            assert_eq!(
                auth.start(m, None).unwrap_err(),
                AuthError::UnsupportedMechanism(m.into())
            );
        }
        let mut s = auth.start("SCRAM-SHA-512", None).unwrap();
        assert!(matches!(
            auth.step(&mut s, &vec![b'n'; MAX_MESSAGE_BYTES + 1]),
            Err(AuthError::Malformed(m)) if m.contains("4097")
        ));
    }

    #[test]
    fn principals_read_as_kafka_writes_them() {
        assert_eq!(Principal::user("bob").to_string(), "User:bob");
        assert_eq!(Principal::Anonymous.to_string(), "User:ANONYMOUS");
    }
}

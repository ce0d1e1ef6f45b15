//! SASL PLAIN (RFC 4616): one message, `authzid NUL authcid NUL password`, checked against
//! the user's SHA-256 credential (the password is derived with its salt and compared, so
//! the store never holds it). PLAIN sends the password itself: use it over TLS.

use crate::credentials::ScramHash;
use crate::{AuthError, Principal, User};

/// Checks a PLAIN message; `lookup` finds a user by name. An authorization identity, if
/// given, must be the user's own (as Kafka requires).
pub fn authenticate(
    message: &[u8],
    lookup: impl FnOnce(&str) -> Option<User>,
) -> Result<Principal, AuthError> {
    let bad = |why: &str| AuthError::Malformed(format!("SASL PLAIN: {why}"));
    let text = std::str::from_utf8(message).map_err(|_| bad("not UTF-8"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected authzid NUL user NUL password"));
    };
    if user.is_empty() {
        return Err(bad("an empty user name"));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(bad("the authorization identity is not the user"));
    }
    match lookup(user) {
        Some(u) if u.scram_sha_256.verify(ScramHash::Sha256, password) => Ok(Principal::user(user)),
        Some(_) => Err(AuthError::Failed),
        None => {
            // As long as a wrong password takes, so that timing does not tell unknown users.
            let decoy = crate::ScramCredential::derive(
                ScramHash::Sha256,
                password,
                vec![0; 24],
                crate::DEFAULT_ITERATIONS,
            );
            let _ = std::hint::black_box(decoy);
            Err(AuthError::Failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        let alice = User::with_password("secret", 4096);
        let find = |n: &str| (n == "alice").then(|| alice.clone());
        assert_eq!(
            authenticate(b"\0alice\0secret", find),
            Ok(Principal::user("alice"))
        );
        assert_eq!(
            authenticate(b"alice\0alice\0secret", find),
            Ok(Principal::user("alice"))
        );
        assert_eq!(
            authenticate(b"\0alice\0secreT", find),
            Err(AuthError::Failed)
        );
        assert_eq!(authenticate(b"\0bob\0secret", find), Err(AuthError::Failed));
        for bad in [
            &b"alice\0secret"[..],
            b"\0alice\0secret\0more",
            b"\0\0secret",
            b"bob\0alice\0secret",
            b"\xff\0alice\0secret",
            b"",
        ] {
            assert!(
                matches!(authenticate(bad, find), Err(AuthError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}

//! JSON Web Tokens for the HTTP door (`Authorization: Bearer`), as browsers and API gateways
//! bring them: signed by a shared secret (HS256) or a key pair (RS256, ES256; a PEM public key
//! or a JWKS file whose keys are picked by `kid`), with an expiry (`exp`, required) and a
//! subject (`sub`, required: the principal). Issuer and audience are checked when configured.
//! The `jsonwebtoken` crate does the signatures and the claim checks.
//!
//! Tokens checked are remembered (by their SHA-256, with their subject and expiry; at most
//! [`CACHE_ENTRIES`]), so that a client sending the same token with every request pays one
//! signature check, not one per request: an ES256 check costs about 54 µs, a cached one the
//! hash (BENCHMARKS.md, "Authentication").

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use crate::{AuthError, Principal};

/// Longest subject taken as a principal.
const MAX_SUBJECT: usize = 256;
/// Largest token looked at (checked before decoding).
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Tokens remembered at most; when full, the cache starts over.
pub const CACHE_ENTRIES: usize = 10_000;
/// Seconds a token is still taken after its `exp` (clock skew).
const LEEWAY: u64 = 30;

/// Where the keys come from.
#[derive(Debug, Clone, Default)]
pub struct JwtFiles {
    /// A file holding the HS256 secret (its bytes, a trailing newline dropped).
    pub hs256_secret: Option<PathBuf>,
    /// A PEM public key, RSA (RS256) or EC P-256 (ES256).
    pub public_key: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`), keys chosen by the token's `kid`.
    pub jwks: Option<PathBuf>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
}

impl JwtFiles {
    pub fn is_empty(&self) -> bool {
        self.hs256_secret.is_none() && self.public_key.is_none() && self.jwks.is_none()
    }
}

/// The keys tokens are checked against.
pub struct Jwt {
    /// Keys without a `kid` (the secret, the PEM key), tried in order.
    keys: Vec<(Algorithm, DecodingKey)>,
    /// JWKS keys, by `kid`.
    by_kid: Vec<(String, Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Tokens that passed, by SHA-256: their principal and `exp`.
    passed: parking_lot::RwLock<std::collections::HashMap<[u8; 32], (Principal, u64)>>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field(
                "keys",
                &self.keys.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .field(
                "kids",
                &self.by_kid.iter().map(|(k, ..)| k).collect::<Vec<_>>(),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fingerprint(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("32 bytes")
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if meta.len() > 1 << 20 {
        return Err(format!("{what} {}: larger than 1 MiB", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl Jwt {
    /// Reads the key files: an unreadable file or a key of no use refuses, with the reason.
    pub fn load(files: &JwtFiles) -> Result<Self, String> {
        let mut keys = Vec::new();
        if let Some(p) = &files.hs256_secret {
            let mut secret = read(p, "auth.jwt_hs256_secret_file")?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.len() < 32 {
                return Err(format!(
                    "auth.jwt_hs256_secret_file {}: {} bytes; an HS256 secret needs 32 at least",
                    p.display(),
                    secret.len()
                ));
            }
            keys.push((Algorithm::HS256, DecodingKey::from_secret(&secret)));
        }
        if let Some(p) = &files.public_key {
            let pem = read(p, "auth.jwt_public_key_file")?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, k)
            } else {
                return Err(format!(
                    "auth.jwt_public_key_file {}: not a PEM RSA or EC public key",
                    p.display()
                ));
            };
            keys.push(key);
        }
        let mut by_kid = Vec::new();
        if let Some(p) = &files.jwks {
            let text = read(p, "auth.jwt_jwks_file")?;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&text)
                .map_err(|e| format!("auth.jwt_jwks_file {}: {e}", p.display()))?;
            for jwk in &set.keys {
                let Some(kid) = jwk.common.key_id.clone() else {
                    return Err(format!(
                        "auth.jwt_jwks_file {}: a key without a kid",
                        p.display()
                    ));
                };
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => {
                        return Err(format!(
                            "auth.jwt_jwks_file {}: key {kid:?} is neither RSA nor EC",
                            p.display()
                        ));
                    }
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("auth.jwt_jwks_file {}: key {kid:?}: {e}", p.display()))?;
                by_kid.push((kid, alg, key));
            }
        }
        Ok(Self {
            keys,
            by_kid,
            issuer: files.issuer.clone(),
            audience: files.audience.clone(),
            passed: Default::default(),
        })
    }

    /// Checks a token: signature by one of the keys (with the algorithm that key is for),
    /// not expired, issuer and audience as configured; its subject is the principal.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let bad = |why: String| AuthError::Malformed(format!("JWT: {why}"));
        if token.len() > MAX_TOKEN_BYTES {
            return Err(bad(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let print = fingerprint(token);
        if let Some((principal, exp)) = self.passed.read().get(&print)
            && now() <= exp.saturating_add(LEEWAY)
        {
            return Ok(principal.clone());
        }
        let principal = self.check(token)?;
        let mut passed = self.passed.write();
        if passed.len() >= CACHE_ENTRIES {
            passed.clear();
        }
        passed.insert(print, principal.clone());
        Ok(principal.0)
    }

    /// The whole check, without the cache: the principal and `exp`.
    fn check(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let bad = |why: String| AuthError::Malformed(format!("JWT: {why}"));
        let header = decode_header(token).map_err(|e| bad(e.to_string()))?;
        let candidates: Vec<(Algorithm, &DecodingKey)> = match &header.kid {
            Some(kid) if !self.by_kid.is_empty() => self
                .by_kid
                .iter()
                .filter(|(k, ..)| k == kid)
                .map(|(_, a, key)| (*a, key))
                .collect(),
            _ => self.keys.iter().map(|(a, k)| (*a, k)).collect(),
        };
        // Only a key made for the token's algorithm is tried: a token cannot pick HS256 to be
        // checked with a public key as its secret.
        let Some((alg, key)) = candidates.into_iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthError::Failed);
        };
        let mut v = Validation::new(alg);
        // A claim the configuration checks must be there: `jsonwebtoken` checks `iss` and
        // `aud` only when present unless they are required.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v.leeway = LEEWAY;
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        let data = decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature | K::ExpiredSignature | K::ImmatureSignature => {
                    AuthError::Failed
                }
                K::InvalidIssuer | K::InvalidAudience => AuthError::Failed,
                _ => bad(e.to_string()),
            }
        })?;
        let sub = data.claims.sub;
        if sub.is_empty() || sub.len() > MAX_SUBJECT || sub.chars().any(char::is_control) {
            return Err(bad(
                "the subject is empty, too long or has control characters".into(),
            ));
        }
        Ok((Principal::user(&sub), data.claims.exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn hs(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn setup(extra: impl FnOnce(&mut JwtFiles)) -> (tempfile::TempDir, Jwt) {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
        let mut files = JwtFiles {
            hs256_secret: Some(secret),
            ..JwtFiles::default()
        };
        extra(&mut files);
        let jwt = Jwt::load(&files).unwrap();
        (dir, jwt)
    }

    #[test]
    fn hs256_tokens_carry_their_subject_until_they_expire() {
        let (_d, jwt) = setup(|_| {});
        let ok = hs(
            serde_json::json!({"sub": "alice", "exp": now() + 60}),
            SECRET,
        );
        assert_eq!(jwt.verify(&ok), Ok(Principal::user("alice")));
        let expired = hs(
            serde_json::json!({"sub": "alice", "exp": now() - 120}),
            SECRET,
        );
        assert_eq!(jwt.verify(&expired), Err(AuthError::Failed));
        let forged = hs(
            serde_json::json!({"sub": "alice", "exp": now() + 60}),
            b"another secret of thirty-two bytes!",
        );
        assert_eq!(jwt.verify(&forged), Err(AuthError::Failed));
        let no_exp = hs(serde_json::json!({"sub": "alice"}), SECRET);
        assert!(matches!(jwt.verify(&no_exp), Err(AuthError::Malformed(_))));
        let no_sub = hs(serde_json::json!({"exp": now() + 60}), SECRET);
        assert!(matches!(jwt.verify(&no_sub), Err(AuthError::Malformed(_))));
        for junk in ["", "a.b.c", "not a token", &"x".repeat(MAX_TOKEN_BYTES + 1)] {
            assert!(
                matches!(jwt.verify(junk), Err(AuthError::Malformed(_))),
                "{junk}"
            );
        }
    }

    #[test]
    fn a_remembered_token_still_expires_and_the_cache_stays_bounded() {
        let (_d, jwt) = setup(|_| {});
        // Expired, but within the 30 s of leeway for another 2 s.
        let t = hs(
            serde_json::json!({"sub": "alice", "exp": now() - 28}),
            SECRET,
        );
        assert_eq!(jwt.verify(&t), Ok(Principal::user("alice")));
        assert_eq!(jwt.passed.read().len(), 1);
        assert_eq!(
            jwt.verify(&t),
            Ok(Principal::user("alice")),
            "from the cache"
        );
        std::thread::sleep(std::time::Duration::from_millis(3100));
        assert_eq!(
            jwt.verify(&t),
            Err(AuthError::Failed),
            "past the leeway, cached or not"
        );
        // A forged token is checked on its own, never found under a real one's entry.
        let forged = hs(
            serde_json::json!({"sub": "alice", "exp": now() + 60}),
            b"another secret of thirty-two bytes!",
        );
        assert_eq!(jwt.verify(&forged), Err(AuthError::Failed));
        for i in 0..CACHE_ENTRIES + 5 {
            let t = hs(
                serde_json::json!({"sub": format!("u{i}"), "exp": now() + 60}),
                SECRET,
            );
            jwt.verify(&t).unwrap();
        }
        assert!(jwt.passed.read().len() <= CACHE_ENTRIES);
    }

    #[test]
    fn an_alg_none_or_a_switched_algorithm_is_refused() {
        let (_d, jwt) = setup(|_| {});
        // alg "none": header {"alg":"none"}, no signature.
        let claims = format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 60);
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!("{}.{}.", b.encode(r#"{"alg":"none"}"#), b.encode(&claims));
        assert!(jwt.verify(&none).is_err());
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &serde_json::json!({"sub": "alice", "exp": now() + 60}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(jwt.verify(&hs512), Err(AuthError::Failed));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let (_d, jwt) = setup(|f| {
            f.issuer = Some("https://idp".into());
            f.audience = Some("weir".into());
        });
        let good = hs(
            serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "https://idp", "aud": "weir"}),
            SECRET,
        );
        assert_eq!(jwt.verify(&good), Ok(Principal::user("a")));
        for bad in [
            serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "https://other", "aud": "weir"}),
            serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "https://idp", "aud": "else"}),
            serde_json::json!({"sub": "a", "exp": now() + 60, "aud": "weir"}),
            serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "https://idp"}),
        ] {
            assert!(jwt.verify(&hs(bad.clone(), SECRET)).is_err(), "{bad}");
        }
    }

    #[test]
    fn unusable_key_files_refuse_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too short").unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": [{"kty": "oct", "k": "AAAA"}]}"#).unwrap();
        for (files, why) in [
            (
                JwtFiles {
                    hs256_secret: Some(short),
                    ..Default::default()
                },
                "32 at least",
            ),
            (
                JwtFiles {
                    public_key: Some(junk),
                    ..Default::default()
                },
                "not a PEM",
            ),
            (
                JwtFiles {
                    jwks: Some(jwks),
                    ..Default::default()
                },
                "kid",
            ),
            (
                JwtFiles {
                    public_key: Some(dir.path().join("missing")),
                    ..Default::default()
                },
                "missing",
            ),
        ] {
            let err = Jwt::load(&files).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}

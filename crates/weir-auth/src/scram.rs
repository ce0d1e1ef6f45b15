//! The server side of a SCRAM exchange (RFC 5802, with SHA-256 per RFC 7677 and SHA-512),
//! sans I/O: client-first in, server-first out; client-final in, server-final out.
//!
//! Written here: the message grammar is a few lines of RFC 5802 §7, and the SCRAM crates on
//! crates.io are unmaintained or bring their own copy of the primitives. The primitives
//! (HMAC, SHA-2) are ring's.
//!
//! Kafka's rules are kept: client-final's nonce must end with the server's (librdkafka repeats
//! its own nonce in front of it), no channel binding (`p=` is refused: no `-PLUS` mechanism is
//! offered), an authorization identity must be the user's own, and the `tokenauth`
//! extension (delegation tokens) is refused. Passwords are taken as UTF-8 bytes without
//! SASLprep, as Kafka's clients send them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac};
use subtle::ConstantTimeEq;

use crate::credentials::{ScramCredential, ScramHash};
use crate::{AuthError, Principal};

/// Bytes of the server's part of the nonce, before base64.
const SERVER_NONCE_BYTES: usize = 24;
/// Longest client nonce accepted.
const MAX_CLIENT_NONCE: usize = 256;

/// Where an exchange is.
#[derive(Debug)]
enum State {
    /// Waiting for client-first.
    Start,
    /// Server-first sent; waiting for client-final.
    Sent {
        user: String,
        /// The credential, or `None` for a user not in the store: the exchange goes on
        /// with a made-up salt and fails at the proof, so that a client cannot tell unknown
        /// users from wrong passwords.
        credential: Option<ScramCredential>,
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    /// Ended (either way): nothing more is accepted.
    Done,
}

/// One SCRAM exchange on the server.
#[derive(Debug)]
pub struct ScramServer {
    hash: ScramHash,
    state: State,
}

/// What the client is sent next.
#[derive(Debug, PartialEq, Eq)]
pub enum ScramStep {
    /// server-first: the client answers with client-final.
    Challenge(Vec<u8>),
    /// Authenticated: server-final (the server's signature) goes to the client.
    Done(Principal, Vec<u8>),
}

impl ScramServer {
    pub fn new(hash: ScramHash) -> Self {
        Self {
            hash,
            state: State::Start,
        }
    }

    /// Takes the client's next message. `lookup` finds a user's credential for this hash;
    /// `fake_salt` gives a stable salt for a user that has none. Any error ends the exchange.
    pub fn step(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        fake_salt: impl FnOnce(&str) -> Vec<u8>,
    ) -> Result<ScramStep, AuthError> {
        let state = std::mem::replace(&mut self.state, State::Done);
        let text = std::str::from_utf8(message)
            .map_err(|_| AuthError::Malformed("a SCRAM message is not UTF-8".into()))?;
        match state {
            State::Start => {
                let first = ClientFirst::parse(text)?;
                let credential = lookup(&first.user);
                let (salt, iterations) = match &credential {
                    Some(c) => (c.salt.clone(), c.iterations),
                    None => (fake_salt(&first.user), crate::DEFAULT_ITERATIONS),
                };
                let mut server_nonce = [0u8; SERVER_NONCE_BYTES];
                crate::random(&mut server_nonce);
                let nonce = format!("{}{}", first.nonce, B64.encode(server_nonce));
                let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
                let challenge = server_first.clone().into_bytes();
                self.state = State::Sent {
                    user: first.user,
                    credential,
                    gs2_header: first.gs2_header,
                    client_first_bare: first.bare,
                    server_first,
                    nonce,
                };
                Ok(ScramStep::Challenge(challenge))
            }
            State::Sent {
                user,
                credential,
                gs2_header,
                client_first_bare,
                server_first,
                nonce,
            } => {
                let last = ClientFinal::parse(text)?;
                if last.channel_binding != gs2_header.as_bytes() {
                    return Err(AuthError::Malformed(
                        "client-final's channel binding (c=) is not client-first's GS2 header"
                            .into(),
                    ));
                }
                // The nonce must end with the one server-first gave, as Kafka brokers check:
                // librdkafka sends its own nonce again in front of it. AuthMessage covers
                // the nonce as sent, and the server's part is fresh per exchange.
                if !last.nonce.ends_with(nonce.as_str())
                    || last.nonce.len() > nonce.len() + MAX_CLIENT_NONCE
                {
                    return Err(AuthError::Malformed(
                        "client-final's nonce does not end with the server's".into(),
                    ));
                }
                let Some(credential) = credential else {
                    return Err(AuthError::Failed);
                };
                if last.proof.len() != self.hash.output_len() {
                    return Err(AuthError::Failed);
                }
                let auth_message =
                    format!("{client_first_bare},{server_first},{}", last.without_proof);
                let stored = hmac::Key::new(self.hash.hmac(), &credential.stored_key);
                let signature = hmac::sign(&stored, auth_message.as_bytes());
                let client_key: Vec<u8> = last
                    .proof
                    .iter()
                    .zip(signature.as_ref())
                    .map(|(p, s)| p ^ s)
                    .collect();
                let computed = digest::digest(self.hash.digest(), &client_key);
                if !bool::from(computed.as_ref().ct_eq(&credential.stored_key)) {
                    return Err(AuthError::Failed);
                }
                let server = hmac::Key::new(self.hash.hmac(), &credential.server_key);
                let server_signature = hmac::sign(&server, auth_message.as_bytes());
                let server_final = format!("v={}", B64.encode(server_signature.as_ref()));
                Ok(ScramStep::Done(
                    Principal::user(&user),
                    server_final.into_bytes(),
                ))
            }
            State::Done => Err(AuthError::IllegalState("the SCRAM exchange is over".into())),
        }
    }
}

/// client-first-message, taken apart.
struct ClientFirst {
    gs2_header: String,
    bare: String,
    user: String,
    nonce: String,
}

impl ClientFirst {
    fn parse(text: &str) -> Result<Self, AuthError> {
        let bad = |why: &str| AuthError::Malformed(format!("SCRAM client-first: {why}"));
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = text.split_once(',').ok_or_else(|| bad("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => {
                return Err(bad("channel binding is not offered (no -PLUS mechanism)"));
            }
            _ => return Err(bad("the GS2 flag is not n, y or p=")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or_else(|| bad("no GS2 header"))?;
        let authzid = match authzid {
            "" => None,
            a => {
                Some(sasl_name(a.strip_prefix("a=").ok_or_else(|| {
                    bad("the authorization identity is not a=...")
                })?)?)
            }
        };
        let gs2_header = text[..text.len() - bare.len()].to_string();
        let mut attrs = bare.split(',');
        let user = attrs
            .next()
            .and_then(|a| a.strip_prefix("n="))
            .ok_or_else(|| bad("no user name (n=) first"))?;
        let user = sasl_name(user)?;
        if user.is_empty() {
            return Err(bad("an empty user name"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| bad("no nonce (r=) after the user name"))?;
        if nonce.is_empty() || nonce.len() > MAX_CLIENT_NONCE {
            return Err(bad("a nonce of 1 to 256 characters expected"));
        }
        if !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(bad("the nonce has characters outside printable ASCII"));
        }
        for extension in attrs {
            // Kafka's one extension: delegation tokens, which weir does not issue.
            if extension.starts_with("tokenauth=") {
                return Err(AuthError::Failed);
            }
            if extension.starts_with("m=") {
                return Err(bad("mandatory extensions (m=) are not supported"));
            }
        }
        if let Some(authzid) = authzid
            && authzid != user
        {
            return Err(AuthError::Malformed(format!(
                "SCRAM client-first: authorization identity {authzid:?} is not the user {user:?}"
            )));
        }
        Ok(Self {
            gs2_header,
            bare: bare.to_string(),
            user,
            nonce: nonce.to_string(),
        })
    }
}

/// client-final-message, taken apart.
struct ClientFinal<'a> {
    channel_binding: Vec<u8>,
    nonce: &'a str,
    /// The message up to its proof: part of AuthMessage.
    without_proof: &'a str,
    proof: Vec<u8>,
}

impl<'a> ClientFinal<'a> {
    fn parse(text: &'a str) -> Result<Self, AuthError> {
        let bad = |why: &str| AuthError::Malformed(format!("SCRAM client-final: {why}"));
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| bad("no proof (p=) last"))?;
        let proof = B64
            .decode(proof.as_bytes())
            .map_err(|_| bad("the proof is not base64"))?;
        let mut attrs = without_proof.split(',');
        let channel_binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or_else(|| bad("no channel binding (c=) first"))?;
        let channel_binding = B64
            .decode(channel_binding.as_bytes())
            .map_err(|_| bad("the channel binding is not base64"))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| bad("no nonce (r=) second"))?;
        Ok(Self {
            channel_binding,
            nonce,
            without_proof,
            proof,
        })
    }
}

/// A saslname (RFC 5802 §5.1): `=2C` is a comma, `=3D` an equals sign, no other `=`.
fn sasl_name(s: &str) -> Result<String, AuthError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => {
                return Err(AuthError::Malformed(
                    "SCRAM: '=' in a name is not =2C or =3D".into(),
                ));
            }
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's side, from the RFC, for the tests: computes client-final for a server-first.
    pub(crate) fn client_final(
        hash: ScramHash,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        gs2_header: &str,
    ) -> (String, Vec<u8>) {
        let nonce = server_first
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .unwrap()
            .to_string();
        client_final_with_nonce(
            hash,
            password,
            client_first_bare,
            server_first,
            gs2_header,
            &nonce,
        )
    }

    /// [`client_final`] sending `nonce` as its r=.
    fn client_final_with_nonce(
        hash: ScramHash,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        gs2_header: &str,
        nonce: &str,
    ) -> (String, Vec<u8>) {
        let mut salt = Vec::new();
        let mut iterations = 0;
        for attr in server_first.split(',') {
            if let Some(s) = attr.strip_prefix("s=") {
                salt = B64.decode(s).unwrap();
            } else if let Some(i) = attr.strip_prefix("i=") {
                iterations = i.parse().unwrap();
            }
        }
        let c = ScramCredential::derive(hash, password, salt.clone(), iterations);
        let without_proof = format!("c={},r={nonce}", B64.encode(gs2_header));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        // ClientKey = HMAC(SaltedPassword, "Client Key"); derive it again (the credential
        // keeps only its hash).
        let mut salted = vec![0u8; hash.output_len()];
        ring::pbkdf2::derive(
            hash.pbkdf2(),
            std::num::NonZeroU32::new(iterations).unwrap(),
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac::sign(&hmac::Key::new(hash.hmac(), &salted), b"Client Key");
        let sig = hmac::sign(
            &hmac::Key::new(hash.hmac(), &c.stored_key),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(sig.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_sig = hmac::sign(
            &hmac::Key::new(hash.hmac(), &c.server_key),
            auth_message.as_bytes(),
        );
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(server_sig.as_ref())).into_bytes(),
        )
    }

    fn store(hash: ScramHash) -> impl Fn(&str) -> Option<ScramCredential> {
        let c = ScramCredential::new(hash, "pencil", 4096);
        move |u| (u == "user").then(|| c.clone())
    }

    fn run(hash: ScramHash, user: &str, password: &str) -> Result<ScramStep, AuthError> {
        let lookup = store(hash);
        let mut s = ScramServer::new(hash);
        let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
        let ScramStep::Challenge(first) =
            s.step(format!("n,,{bare}").as_bytes(), &lookup, |_| vec![7; 16])?
        else {
            panic!("no challenge")
        };
        let first = String::from_utf8(first).unwrap();
        let (last, _) = client_final(hash, password, &bare, &first, "n,,");
        s.step(last.as_bytes(), &lookup, |_| vec![7; 16])
    }

    #[test]
    fn rfc_7677_exchange_is_accepted_with_its_server_signature() {
        // RFC 7677 §3's exchange, replayed with the RFC's own server nonce and salt.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let c = ScramCredential::derive(ScramHash::Sha256, "pencil", salt, 4096);
        let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let mut s = ScramServer::new(ScramHash::Sha256);
        s.state = State::Sent {
            user: "user".into(),
            credential: Some(c),
            gs2_header: "n,,".into(),
            client_first_bare: bare.into(),
            server_first: server_first.into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
        };
        let step = s
            .step(client_final.as_bytes(), |_| None, |_| Vec::new())
            .unwrap();
        assert_eq!(
            step,
            ScramStep::Done(
                Principal::user("user"),
                b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
            )
        );
    }

    #[test]
    fn both_hashes_authenticate_and_sign() {
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            match run(hash, "user", "pencil").unwrap() {
                ScramStep::Done(p, v) => {
                    assert_eq!(p, Principal::user("user"));
                    assert!(v.starts_with(b"v="));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn wrong_passwords_and_unknown_users_fail_alike() {
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            assert_eq!(run(hash, "user", "pencil2"), Err(AuthError::Failed));
            assert_eq!(run(hash, "nobody", "pencil"), Err(AuthError::Failed));
        }
    }

    #[test]
    fn an_unknown_user_is_sent_the_same_shape_of_challenge() {
        let lookup = store(ScramHash::Sha256);
        let mut s = ScramServer::new(ScramHash::Sha256);
        let ScramStep::Challenge(c) = s
            .step(b"n,,n=nobody,r=abc", &lookup, |_| vec![9; 24])
            .unwrap()
        else {
            panic!()
        };
        let c = String::from_utf8(c).unwrap();
        assert!(c.starts_with("r=abc") && c.ends_with(",i=4096"), "{c}");
        assert!(c.contains(&format!("s={}", B64.encode([9u8; 24]))), "{c}");
    }

    #[test]
    fn a_replayed_client_final_fails_against_a_new_server_nonce() {
        let hash = ScramHash::Sha256;
        let lookup = store(hash);
        let bare = "n=user,r=clientnonce";
        let mut first_run = ScramServer::new(hash);
        let ScramStep::Challenge(sf) = first_run
            .step(format!("n,,{bare}").as_bytes(), &lookup, |_| vec![])
            .unwrap()
        else {
            panic!()
        };
        let (last, _) = client_final(
            hash,
            "pencil",
            bare,
            std::str::from_utf8(&sf).unwrap(),
            "n,,",
        );
        assert!(matches!(
            first_run.step(last.as_bytes(), &lookup, |_| vec![]),
            Ok(ScramStep::Done(..))
        ));
        // The same client-final again, in a new exchange with the same client nonce.
        let mut replay = ScramServer::new(hash);
        replay
            .step(format!("n,,{bare}").as_bytes(), &lookup, |_| vec![])
            .unwrap();
        assert!(matches!(
            replay.step(last.as_bytes(), &lookup, |_| vec![]),
            Err(AuthError::Malformed(m)) if m.contains("nonce")
        ));
        // And once an exchange is over, nothing more is taken.
        assert!(matches!(
            first_run.step(last.as_bytes(), &lookup, |_| vec![]),
            Err(AuthError::IllegalState(_))
        ));
    }

    #[test]
    fn malformed_messages_are_refused_with_the_reason() {
        let lookup = store(ScramHash::Sha256);
        for (msg, why) in [
            (&b"p=tls-unique,,n=user,r=x"[..], "channel binding"),
            (b"x,,n=user,r=x", "GS2 flag"),
            (b"n,a=other,n=user,r=x", "authorization identity"),
            (b"n,,r=x", "user name"),
            (b"n,,n=user", "nonce"),
            (b"n,,n=user,r=", "nonce"),
            (b"n,,n=us=er,r=x", "=2C"),
            (b"n,,n=user,r=x,m=ext", "mandatory"),
            (b"n,,n=user,r=a b", "printable"),
            (b"n", "GS2"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            let err = ScramServer::new(ScramHash::Sha256)
                .step(msg, &lookup, |_| vec![])
                .unwrap_err();
            assert!(err.to_string().contains(why), "{msg:?}: {err}");
        }
        assert_eq!(
            ScramServer::new(ScramHash::Sha256)
                .step(b"n,,n=user,r=x,tokenauth=true", &lookup, |_| vec![])
                .unwrap_err(),
            AuthError::Failed
        );
        // A client-final that does not bind the GS2 header it sent, or has no proof.
        for last in ["c=eSws,r=NONCE,p=AAAA", "c=biws,r=NONCE", "r=NONCE,p=AAAA"] {
            let mut s = ScramServer::new(ScramHash::Sha256);
            let ScramStep::Challenge(sf) = s.step(b"n,,n=user,r=x", &lookup, |_| vec![]).unwrap()
            else {
                panic!()
            };
            let nonce =
                std::str::from_utf8(&sf).unwrap().split(',').next().unwrap()[2..].to_string();
            let last = last.replace("NONCE", &nonce);
            assert!(
                matches!(
                    s.step(last.as_bytes(), &lookup, |_| vec![]),
                    Err(AuthError::Malformed(_))
                ),
                "{last}"
            );
        }
    }

    #[test]
    fn librdkafkas_doubled_client_nonce_is_taken_and_a_foreign_one_is_not() {
        // librdkafka sends client-final's r= as its nonce followed by server-first's whole
        // r= value (which already starts with its nonce); Kafka brokers take it.
        let hash = ScramHash::Sha256;
        let lookup = store(hash);
        let bare = "n=user,r=cn";
        for (prefix, ok) in [("cn", true), ("", true), ("zz", true), ("x", true)] {
            let mut s = ScramServer::new(hash);
            let ScramStep::Challenge(sf) = s
                .step(format!("n,,{bare}").as_bytes(), &lookup, |_| vec![])
                .unwrap()
            else {
                panic!()
            };
            let sf = String::from_utf8(sf).unwrap();
            let nonce = sf.split(',').next().unwrap()[2..].to_string();
            let sent = format!("{prefix}{nonce}");
            let (last, _) = client_final_with_nonce(hash, "pencil", bare, &sf, "n,,", &sent);
            let r = s.step(last.as_bytes(), &lookup, |_| vec![]);
            assert_eq!(matches!(r, Ok(ScramStep::Done(..))), ok, "{sent}: {r:?}");
        }
        // A nonce that does not end with the server's is refused, whatever its proof.
        let mut s = ScramServer::new(hash);
        let ScramStep::Challenge(sf) = s
            .step(format!("n,,{bare}").as_bytes(), &lookup, |_| vec![])
            .unwrap()
        else {
            panic!()
        };
        let sf = String::from_utf8(sf).unwrap();
        let (last, _) = client_final_with_nonce(hash, "pencil", bare, &sf, "n,,", "cnother");
        assert!(matches!(
            s.step(last.as_bytes(), &lookup, |_| vec![]),
            Err(AuthError::Malformed(m)) if m.contains("nonce")
        ));
    }

    #[test]
    fn names_with_escapes_and_a_matching_authzid_are_taken() {
        assert_eq!(sasl_name("a=2Cb=3Dc").unwrap(), "a,b=c");
        let first = ClientFirst::parse("n,a=x=2Cy,n=x=2Cy,r=abc").unwrap();
        assert_eq!(first.user, "x,y");
        assert_eq!(first.gs2_header, "n,a=x=2Cy,");
        assert_eq!(first.bare, "n=x=2Cy,r=abc");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_answered_without_panicking(a in proptest::collection::vec(0u8..=255, 0..200), b in proptest::collection::vec(0u8..=255, 0..200)) {
            let lookup = store(ScramHash::Sha256);
            let mut s = ScramServer::new(ScramHash::Sha256);
            let _ = s.step(&a, &lookup, |_| vec![1]);
            let _ = s.step(&b, &lookup, |_| vec![1]);
        }
    }
}

//! The client side of a SCRAM exchange (RFC 5802), for weir's own client: client-first,
//! then client-final from the server's challenge, then a check of the server's signature,
//! which proves the server holds the user's credential (not just any server answering).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac};
use subtle::ConstantTimeEq;

use crate::credentials::{MAX_ITERATIONS, ScramHash};

/// Bytes of the client's nonce, before base64.
const NONCE_BYTES: usize = 24;

/// One SCRAM exchange on the client.
#[derive(Debug)]
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    client_first_bare: String,
    nonce: String,
    /// Once client-final is made: the server signature expected.
    expected: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange for `user` (letters, digits and `._-@`: no name escaping needed,
    /// but escaped anyway).
    pub fn new(hash: ScramHash, user: &str, password: &str) -> Self {
        let mut raw = [0u8; NONCE_BYTES];
        crate::random(&mut raw);
        let nonce = B64.encode(raw);
        let name = user.replace('=', "=3D").replace(',', "=2C");
        Self {
            hash,
            password: password.to_string(),
            client_first_bare: format!("n={name},r={nonce}"),
            nonce,
            expected: None,
        }
    }

    /// client-first-message.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// client-final-message, for the server's server-first-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(server_first).map_err(|_| "server-first is not UTF-8")?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in text.split(',') {
            if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            } else if let Some(s) = attr.strip_prefix("s=") {
                salt = Some(B64.decode(s).map_err(|_| "the salt is not base64")?);
            } else if let Some(i) = attr.strip_prefix("i=") {
                iterations = Some(i.parse::<u32>().map_err(|_| "iterations not a number")?);
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(format!("server-first {text:?} lacks r=, s= or i="));
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("the server's nonce does not extend ours".into());
        }
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(format!("{iterations} iterations asked: out of bounds"));
        }
        let mut salted = vec![0u8; self.hash.output_len()];
        ring::pbkdf2::derive(
            self.hash.pbkdf2(),
            std::num::NonZeroU32::new(iterations).expect("checked"),
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted = hmac::Key::new(self.hash.hmac(), &salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(self.hash.digest(), client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac::sign(
            &hmac::Key::new(self.hash.hmac(), stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac::sign(&salted, b"Server Key");
        let server_signature = hmac::sign(
            &hmac::Key::new(self.hash.hmac(), server_key.as_ref()),
            auth_message.as_bytes(),
        );
        self.expected = Some(server_signature.as_ref().to_vec());
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks server-final-message: the server proved it holds the credential.
    pub fn verify_server(&self, server_final: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(server_final).map_err(|_| "server-final is not UTF-8")?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(format!("the server refused: {e}"));
        }
        let v = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or("server-final has no signature")?;
        let expected = self.expected.as_ref().ok_or("no client-final was made")?;
        if bool::from(v.ct_eq(expected)) {
            Ok(())
        } else {
            Err("the server's signature is wrong: it does not hold this user's credential".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scram::{ScramServer, ScramStep};
    use crate::{Principal, ScramCredential};

    #[test]
    fn client_and_server_agree_and_the_client_checks_the_server() {
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            let stored = ScramCredential::new(hash, "p@ss,word=", 4096);
            let lookup = |u: &str| (u == "a.b@c").then(|| stored.clone());
            let mut client = ScramClient::new(hash, "a.b@c", "p@ss,word=");
            let mut server = ScramServer::new(hash);
            let ScramStep::Challenge(first) = server
                .step(&client.client_first(), lookup, |_| vec![])
                .unwrap()
            else {
                panic!()
            };
            let last = client.client_final(&first).unwrap();
            let ScramStep::Done(p, server_final) = server.step(&last, lookup, |_| vec![]).unwrap()
            else {
                panic!()
            };
            assert_eq!(p, Principal::user("a.b@c"));
            client.verify_server(&server_final).unwrap();
            // A server that does not hold the credential cannot sign.
            assert!(client.verify_server(b"v=AAAA").is_err());
            assert!(client.verify_server(b"e=invalid-proof").is_err());
        }
    }

    #[test]
    fn a_server_first_that_does_not_extend_our_nonce_is_refused() {
        let mut c = ScramClient::new(ScramHash::Sha256, "u", "p");
        assert!(c.client_final(b"r=othernonce,s=AAAA,i=4096").is_err());
        let ours = c.nonce.clone();
        assert!(
            c.client_final(format!("r={ours},s=AAAA,i=4096").as_bytes())
                .is_err()
        );
        assert!(
            c.client_final(format!("r={ours}x,s=AAAA,i={}", u32::MAX).as_bytes())
                .is_err()
        );
        assert!(
            c.client_final(format!("r={ours}x,s=AAAA").as_bytes())
                .is_err()
        );
    }
}

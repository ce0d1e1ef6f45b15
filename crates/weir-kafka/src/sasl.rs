//! Authentication of a Kafka connection, when the server requires it (`[auth]`): before
//! anything else a client may send ApiVersions, then SaslHandshake (v1: the mechanism), then
//! SaslAuthenticate until the mechanism is done (PLAIN: one round; SCRAM: two). Any other
//! request first closes the connection, as a Kafka broker does; a failed authentication is
//! answered SASL_AUTHENTICATION_FAILED, with the reason, then closes it.
//!
//! SaslHandshake v0 (removed in Kafka 4, but librdkafka counts on it being advertised) is
//! served too: after it, the client's SASL messages come as bare size-prefixed frames, not
//! Kafka requests, and are answered the same way; a failure then just closes the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, RequestKind, ResponseHeader, ResponseKind, SaslAuthenticateResponse,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use weir_auth::{Auth, AuthError, Exchanged, Principal, Sasl};

use crate::dispatch::{Request, api_name, finish_body};
use crate::{Reply, code};

/// Where a connection stands with authentication.
#[derive(Debug)]
pub(crate) struct Session {
    auth: Option<Arc<Auth>>,
    principal: Option<Principal>,
    /// After SaslHandshake: the mechanism's name and its exchange (or why it may not start).
    exchange: Option<(&'static str, Result<Sasl, AuthError>)>,
    /// The handshake was v0: the exchange's messages come as bare frames.
    raw: bool,
    peer: Option<SocketAddr>,
}

/// What to do with a request read before the connection authenticated.
// Made once per request and matched at once: boxing the request would add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Gate {
    /// Handle it as usual (ApiVersions, or anything once authenticated).
    Pass(Request),
    /// Authentication answered it; close the connection once the answer is sent if `close`.
    Answer { reply: Reply, close: bool },
}

impl Session {
    /// A new connection's session: anonymous and done if the server requires no
    /// authentication; done as `certificate_name` if a verified client certificate names the
    /// client (mutual TLS).
    pub(crate) fn new(
        auth: Option<Arc<Auth>>,
        peer: Option<SocketAddr>,
        certificate_name: Option<String>,
    ) -> Self {
        let principal = match (&auth, certificate_name) {
            (None, _) => Some(Principal::Anonymous),
            (Some(a), Some(name)) => {
                let p = Principal::user(&name);
                a.record("kafka", "mtls", peer, &Ok(p.clone()));
                tracing::Span::current().record("principal", tracing::field::display(&p));
                Some(p)
            }
            (Some(_), None) => None,
        };
        Self {
            principal,
            auth,
            exchange: None,
            raw: false,
            peer,
        }
    }

    /// Whether the next frame is a bare SASL message (after a v0 handshake), for
    /// [`Session::raw_step`], rather than a Kafka request.
    pub(crate) fn expects_raw(&self) -> bool {
        self.raw && self.principal.is_none()
    }

    /// Takes a bare SASL message: the answer is the mechanism's message, size-prefixed; a
    /// failure closes the connection without a word (the v0 protocol has none).
    pub(crate) async fn raw_step(&mut self, message: Bytes) -> Reply {
        let Some(auth) = self.auth.clone() else {
            return Reply::Close;
        };
        match self.step(&auth, message).await {
            Ok(bytes) => {
                let mut out = BytesMut::with_capacity(4 + bytes.len());
                out.put_u32(bytes.len() as u32);
                out.put_slice(&bytes);
                Reply::Response(out.freeze())
            }
            Err(_) => Reply::Close,
        }
    }

    pub(crate) fn is_authenticated(&self) -> bool {
        self.principal.is_some()
    }

    /// Who the client is, once it has authenticated.
    pub(crate) fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Takes a request of a connection: passed on once authenticated, else answered by the
    /// authentication (or refused).
    pub(crate) async fn gate(&mut self, request: Request) -> Gate {
        let Some(auth) = self.auth.clone() else {
            return Gate::Pass(request);
        };
        if self.principal.is_some() || request.api == ApiKey::ApiVersions {
            return Gate::Pass(request);
        }
        let (api, version, correlation) =
            (request.api, request.version, request.header.correlation_id);
        match request.body {
            RequestKind::SaslHandshake(r) => {
                metrics::counter!("weir_kafka_requests_total", "api" => api_name(api)).increment(1);
                self.handshake(&auth, version, correlation, r.mechanism.as_str())
            }
            RequestKind::SaslAuthenticate(r) => {
                metrics::counter!("weir_kafka_requests_total", "api" => api_name(api)).increment(1);
                self.authenticate(&auth, version, correlation, r.auth_bytes)
                    .await
            }
            _ => {
                metrics::counter!("weir_kafka_refused_requests_total", "reason" => "unauthenticated")
                    .increment(1);
                tracing::info!(
                    ?api,
                    "Kafka request before authentication (SASL required); closing the connection"
                );
                Gate::Answer {
                    reply: Reply::Close,
                    close: true,
                }
            }
        }
    }

    fn handshake(&mut self, auth: &Auth, version: i16, correlation: i32, mechanism: &str) -> Gate {
        let mechanisms = auth
            .mechanism_names()
            .into_iter()
            .map(StrBytes::from_static_str)
            .collect();
        let response = SaslHandshakeResponse::default().with_mechanisms(mechanisms);
        let (error, close) = if self.exchange.is_some() {
            (code::ILLEGAL_SASL_STATE, true)
        } else {
            match auth.start(mechanism, self.peer.map(|p| p.ip())) {
                Err(e @ AuthError::UnsupportedMechanism(_)) => {
                    auth.record("kafka", mechanism, self.peer, &Err(e));
                    (code::UNSUPPORTED_SASL_MECHANISM, true)
                }
                // Limited: the handshake goes through, and SaslAuthenticate (whose answer
                // carries a message) says why it cannot.
                started => {
                    let name = weir_auth::Mechanism::parse(mechanism)
                        .map_or("other", weir_auth::Mechanism::name);
                    self.exchange = Some((name, started));
                    (code::NONE, false)
                }
            }
        };
        self.raw = version == 0 && error == code::NONE;
        let response = ResponseKind::SaslHandshake(response.with_error_code(error));
        Gate::Answer {
            reply: respond(ApiKey::SaslHandshake, version, correlation, &response),
            close,
        }
    }

    async fn authenticate(
        &mut self,
        auth: &Arc<Auth>,
        version: i16,
        correlation: i32,
        bytes: Bytes,
    ) -> Gate {
        let answer = |response: SaslAuthenticateResponse, close: bool| Gate::Answer {
            reply: respond(
                ApiKey::SaslAuthenticate,
                version,
                correlation,
                &ResponseKind::SaslAuthenticate(response),
            ),
            close,
        };
        if self.exchange.is_none() {
            let response = SaslAuthenticateResponse::default()
                .with_error_code(code::ILLEGAL_SASL_STATE)
                .with_error_message(Some(StrBytes::from_static_str(
                    "SaslAuthenticate before SaslHandshake",
                )));
            return answer(response, true);
        }
        match self.step(auth, bytes).await {
            Ok(reply_bytes) => answer(
                SaslAuthenticateResponse::default()
                    .with_auth_bytes(Bytes::from(reply_bytes))
                    .with_session_lifetime_ms(0),
                false,
            ),
            Err(e) => answer(
                SaslAuthenticateResponse::default()
                    .with_error_code(code::SASL_AUTHENTICATION_FAILED)
                    .with_error_message(Some(StrBytes::from_string(e.to_string()))),
                true,
            ),
        }
    }

    /// One message of the exchange the handshake started: the mechanism's answer, or why
    /// the authentication failed (counted, logged, and answered late).
    async fn step(&mut self, auth: &Arc<Auth>, bytes: Bytes) -> Result<Vec<u8>, AuthError> {
        let Some((mechanism, started)) = self.exchange.take() else {
            return Err(AuthError::IllegalState(
                "a SASL message before SaslHandshake".into(),
            ));
        };
        match auth
            .exchange("kafka", self.peer, mechanism, started, bytes)
            .await?
        {
            Exchanged::Continue(sasl, challenge) => {
                self.exchange = Some((mechanism, Ok(sasl)));
                Ok(challenge)
            }
            Exchanged::Done(principal, last) => {
                tracing::Span::current().record("principal", tracing::field::display(&principal));
                self.principal = Some(principal);
                Ok(last)
            }
        }
    }
}

/// The answer to a SASL request of an authenticated connection, or of any connection when
/// the server requires no authentication: ILLEGAL_SASL_STATE, as a Kafka broker answers.
pub(crate) fn out_of_place(request: &RequestKind, auth: Option<&Auth>) -> Option<ResponseKind> {
    match request {
        RequestKind::SaslHandshake(_) => {
            let mechanisms = auth.map_or_else(Vec::new, |a| {
                a.mechanism_names()
                    .into_iter()
                    .map(StrBytes::from_static_str)
                    .collect()
            });
            Some(ResponseKind::SaslHandshake(
                SaslHandshakeResponse::default()
                    .with_error_code(code::ILLEGAL_SASL_STATE)
                    .with_mechanisms(mechanisms),
            ))
        }
        RequestKind::SaslAuthenticate(_) => {
            let message = if auth.is_some() {
                "the connection is already authenticated"
            } else {
                "this server requires no authentication (no [auth] in its configuration)"
            };
            Some(ResponseKind::SaslAuthenticate(
                SaslAuthenticateResponse::default()
                    .with_error_code(code::ILLEGAL_SASL_STATE)
                    .with_error_message(Some(StrBytes::from_static_str(message))),
            ))
        }
        _ => None,
    }
}

/// Encodes a whole answer: size prefix, header, `response`.
fn respond(api: ApiKey, version: i16, correlation: i32, response: &ResponseKind) -> Reply {
    let mut body = BytesMut::new();
    body.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation);
    if header
        .encode(&mut body, api.response_header_version(version))
        .is_err()
    {
        return Reply::Close;
    }
    finish_body(body, api, version, response)
}

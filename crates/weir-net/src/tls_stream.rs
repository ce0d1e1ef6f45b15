//! The server side of one TLS connection over a `TcpStream`, on rustls's unbuffered API.
//!
//! Written here rather than taken from tokio-rustls because of what an idle connection costs:
//! rustls's buffered connection keeps a 4 KiB receive buffer allocated for the next record for
//! as long as the connection lives, idle or not, and tokio-rustls has no way to release it.
//! With 19,000 idle connections that buffer was 40% of the server's memory for them. Here the
//! connection owns its buffers, and a connection that waits for its peer holds none of them:
//! received bytes are read into a buffer that is released once its records are processed,
//! and the records the peer sent are decrypted by rustls (all of the protocol, the keys, the
//! alerts, key updates and session tickets stay rustls's; only the moving of bytes is ours).
//!
//! Reads and writes may come from different tasks (through `tokio::io::split`); only the
//! writer waits for the socket to take bytes. Bytes that reading makes rustls want to send (a
//! key update's answer, an alert) are sent at once if the socket takes them, else with the
//! next write or flush.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room made for one socket read: a whole record of the largest size (16 KiB of data, its
/// header and the encryption's overhead) and more.
const READ_CHUNK: usize = 18 * 1024;

/// Received bytes held before their record or handshake message is complete. A record is at
/// most 16 KiB and some, a handshake message rustls accepts at most 64 KiB; a peer that sends
/// more than this without completing one is cut off.
const MAX_INCOMING: usize = 128 * 1024;

/// Application bytes encrypted per write: four full records. What a write hands over is
/// encrypted at once and held until the socket takes it, so this bounds that buffer.
const MAX_WRITE: usize = 64 * 1024;

/// A TLS connection's server side, once its handshake is done (see [`TlsStream::accept`]).
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received bytes not yet processed: part of a record. Released when empty and the
    /// connection waits.
    incoming: Vec<u8>,
    /// Decrypted bytes not yet read, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes not yet written, from `out_at` on.
    outgoing: Vec<u8>,
    out_at: usize,
    /// The peer sent close_notify, or closed its side of the socket.
    read_closed: bool,
    /// We sent close_notify.
    write_closed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .field("incoming", &self.incoming.len())
            .field("plain", &(self.plain.len() - self.plain_at))
            .field("outgoing", &(self.outgoing.len() - self.out_at))
            .finish_non_exhaustive()
    }
}

type NoWrite = fn(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<()>;

/// Where processing the received bytes stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Everything received is processed; the connection may send.
    Traffic,
    /// The handshake waits for more bytes from the peer.
    Blocked,
    /// Both sides sent close_notify.
    Closed,
}

/// Appends to `out` what `write` encrypts into the room it is given: `room` bytes first, and
/// as many as rustls then says it needs.
fn append_records(
    out: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let at = out.len();
    loop {
        out.resize(at + room, 0);
        match write(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(s)) if s.required_size > room => {
                room = s.required_size;
            }
            Err(e) => {
                out.truncate(at);
                return Err(io::Error::other(e.to_string()));
            }
        }
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// Runs the server side of a handshake on `tcp` (no timeout here: the caller bounds it).
    /// Returns once the handshake is complete, the client's certificate (if asked for)
    /// verified, and everything the server had to send sent.
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = TlsStream {
            tcp,
            conn,
            incoming: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            outgoing: Vec::new(),
            out_at: 0,
            read_closed: false,
            write_closed: false,
        };
        loop {
            // A TLS 1.3 server may send before its handshake ends (it reaches `Traffic` after
            // its own Finished): the handshake is done when rustls says so, which is after the
            // client's certificate and Finished.
            let stop = s.pump()?;
            std::future::poll_fn(|cx| s.poll_flush_outgoing(cx)).await?;
            if !s.conn.is_handshaking() {
                return Ok(s);
            }
            if stop == Stop::Closed || s.read_closed {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
            let n = std::future::poll_fn(|cx| s.poll_fill(cx)).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
        }
    }

    /// The certificates the client presented (mutual TLS), its own first.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Processes the bytes received so far: records are decrypted into `plain`, what rustls
    /// has to send is encoded into `outgoing`. Stops when all is processed, and then, if the
    /// connection may send, applies `write` to encrypt into `outgoing`.
    fn process<R>(
        &mut self,
        mut write: Option<
            impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<R>,
        >,
    ) -> io::Result<(Stop, Option<R>)> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard);
                    return Err(tls_error(e));
                }
            };
            let mut stop = None;
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        if self.plain_at == self.plain.len() {
                            self.plain.clear();
                            self.plain_at = 0;
                        }
                        self.plain.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    // Asked with no room first, it says how much it needs (and an empty
                    // record, which rustls does not make, would be encoded there and then).
                    if let Err(EncodeError::InsufficientSize(need)) = encode.encode(&mut []) {
                        let at = self.outgoing.len();
                        self.outgoing.resize(at + need.required_size, 0);
                        let n = encode
                            .encode(&mut self.outgoing[at..])
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        self.outgoing.truncate(at + n);
                    }
                }
                // Encoded bytes are sent in order before any written later, so rustls may be
                // told now that they are on their way.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::BlockedHandshake => stop = Some(Stop::Blocked),
                ConnectionState::PeerClosed => self.read_closed = true,
                ConnectionState::Closed => {
                    self.read_closed = true;
                    stop = Some(Stop::Closed);
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    let r = match write.take() {
                        Some(f) => Some(f(&mut traffic, &mut self.outgoing)?),
                        None => None,
                    };
                    self.incoming.drain(..discard);
                    return Ok((Stop::Traffic, r));
                }
                // The server's configuration accepts no early data.
                ConnectionState::ReadEarlyData(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS early data, which this server does not accept",
                    ));
                }
                _ => {
                    return Err(io::Error::other(
                        "a TLS connection state this server does not know",
                    ));
                }
            }
            self.incoming.drain(..discard);
            if let Some(stop) = stop {
                return Ok((stop, None));
            }
        }
    }

    /// [`Self::process`], and on a TLS error the alert rustls makes for it queued to be sent
    /// (it is sent if the socket takes it at once).
    fn process_or_alert<R>(
        &mut self,
        write: Option<
            impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<R>,
        >,
    ) -> io::Result<(Stop, Option<R>)> {
        match self.process(write) {
            Ok(r) => Ok(r),
            Err(e) => {
                // After an error rustls offers the alert it queued before anything else.
                if let Ok(ConnectionState::EncodeTlsData(mut encode)) =
                    self.conn.process_tls_records(&mut []).state
                {
                    let mut alert = [0u8; 64];
                    if let Ok(n) = encode.encode(&mut alert) {
                        self.outgoing.extend_from_slice(&alert[..n]);
                        self.try_send();
                    }
                }
                self.incoming = Vec::new();
                Err(e)
            }
        }
    }

    /// [`Self::process_or_alert`] with nothing to write.
    fn pump(&mut self) -> io::Result<Stop> {
        Ok(self.process_or_alert(None::<NoWrite>)?.0)
    }

    /// Reads from the socket into `incoming` (made room for here). `Ready(0)` at the end of
    /// the stream; `Pending` (with the waker registered) when nothing is there.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS peer sent more than 128 KiB without completing a record",
            )));
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            self.incoming.reserve(READ_CHUNK);
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `outgoing` to the socket until it is empty (`Ready`), or the socket is full
    /// (`Pending`, with the waker registered).
    fn poll_flush_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.outgoing.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what the socket takes of `outgoing` now, without waiting (used by reads, which
    /// must not take the writer's place as the one waiting for the socket).
    fn try_send(&mut self) {
        while self.out_at < self.outgoing.len() {
            match self.tcp.try_write(&self.outgoing[self.out_at..]) {
                Ok(n) if n > 0 => self.out_at += n,
                _ => return,
            }
        }
        self.outgoing.clear();
        self.out_at = 0;
    }

    /// Copies decrypted bytes into `buf`; whether there were any.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let have = &self.plain[self.plain_at..];
        if have.is_empty() {
            return false;
        }
        let n = have.len().min(buf.remaining());
        buf.put_slice(&have[..n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain.clear();
            self.plain_at = 0;
        }
        true
    }

    /// About to wait for the peer: gives back the memory of the buffers that are empty, so
    /// that a quiet connection holds none.
    fn release_idle_buffers(&mut self) {
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
        if self.out_at == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.out_at = 0;
        }
    }

    /// Encrypts `data` (at most [`MAX_WRITE`] of it) into `outgoing`; how much was taken.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        let data = &data[..data.len().min(MAX_WRITE)];
        let (stop, n) = self.process_or_alert(Some(
            |traffic: &mut WriteTraffic<'_, ServerConnectionData>, out: &mut Vec<u8>| {
                // Room for the records and their overhead (header, tag, content type).
                let room = data.len() + (data.len() / (16 * 1024) + 1) * 64;
                append_records(out, room, |buf| traffic.encrypt(data, buf))?;
                Ok(data.len())
            },
        ))?;
        match (stop, n) {
            (_, Some(n)) => Ok(n),
            _ => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closed",
            )),
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.take_plain(buf) || this.read_closed {
                return Poll::Ready(Ok(()));
            }
            match this.poll_fill(cx) {
                Poll::Pending => {
                    this.release_idle_buffers();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    this.read_closed = true;
                    if !this.incoming.is_empty() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed the connection in the middle of a TLS record",
                        )));
                    }
                    // Closed without close_notify: the end of the stream all the same (the
                    // doors' protocols frame their messages and see a truncated one).
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {
                    this.pump()?;
                    this.try_send();
                }
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // One write's records are held at most: the earlier ones must be gone first.
        ready!(this.poll_flush_outgoing(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the TLS connection was shut down",
            )));
        }
        let n = this.encrypt(buf)?;
        // Sent now as far as the socket takes it; the rest goes with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_flush_outgoing(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // The slices are gathered into one run of records (each encryption call makes at
        // least one record: small slices one by one would make small records).
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if first.len() >= MAX_WRITE.min(total) {
            return self.poll_write(cx, first);
        }
        let mut gathered = Vec::with_capacity(total.min(MAX_WRITE));
        for b in bufs {
            let room = MAX_WRITE - gathered.len();
            gathered.extend_from_slice(&b[..b.len().min(room)]);
            if gathered.len() == MAX_WRITE {
                break;
            }
        }
        self.poll_write(cx, &gathered)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            ready!(this.poll_flush_outgoing(cx))?;
            this.write_closed = true;
            // Best effort: a connection already failed has no close_notify to send.
            let _ = this.process(Some(
                |traffic: &mut WriteTraffic<'_, ServerConnectionData>, out: &mut Vec<u8>| {
                    append_records(out, 64, |buf| traffic.queue_close_notify(buf))
                },
            ));
        }
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{CertificateParams, CertifiedIssuer, DnType, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Pki {
        server: Arc<rustls::ServerConfig>,
        client: tokio_rustls::TlsConnector,
    }

    /// A server for 127.0.0.1 that requires a client certificate (CN "alice"), and a client
    /// that has one.
    fn pki() -> Pki {
        #[allow(deprecated)] // ring's provider: see tls.rs
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "alice");
        let client = client.signed_by(&client_key, &ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![client.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(client_key.serialize_der()).unwrap(),
            )
            .unwrap();
        Pki {
            server: Arc::new(server),
            client: tokio_rustls::TlsConnector::from(Arc::new(client)),
        }
    }

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    /// A connected pair: our server side, a tokio-rustls client side.
    async fn pair(pki: &Pki) -> (TlsStream, Client) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = pki.server.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsStream::accept(tcp, config).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let client = pki.client.connect(name, tcp).await.unwrap();
        (server.await.unwrap().unwrap(), client)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn carries_megabytes_both_ways_at_once_through_split_halves() {
        let pki = pki();
        let (server, client) = pair(&pki).await;
        assert!(server.peer_certificates().is_some_and(|c| c.len() == 1));
        let up = pattern(3 << 20, 1);
        let down = pattern(3 << 20, 2);
        let (mut sr, mut sw) = tokio::io::split(server);
        let (mut cr, mut cw) = tokio::io::split(client);
        let (up2, down2) = (up.clone(), down.clone());
        let tasks = [
            // Odd-sized writes, to cross record and buffer boundaries.
            tokio::spawn(async move {
                for chunk in up2.chunks(70_001) {
                    cw.write_all(chunk).await.unwrap();
                }
                cw.flush().await.unwrap();
                Vec::new()
            }),
            tokio::spawn(async move {
                for chunk in down2.chunks(12_345) {
                    sw.write_all(chunk).await.unwrap();
                }
                sw.shutdown().await.unwrap();
                Vec::new()
            }),
            tokio::spawn(async move {
                let mut got = vec![0u8; 3 << 20];
                sr.read_exact(&mut got).await.unwrap();
                got
            }),
            tokio::spawn(async move {
                let mut got = Vec::new();
                // The server's shutdown sent close_notify: the client sees a clean end.
                cr.read_to_end(&mut got).await.unwrap();
                got
            }),
        ];
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        assert!(out[2] == up, "the server read what the client wrote");
        assert!(out[3] == down, "the client read what the server wrote");
    }

    #[tokio::test]
    async fn vectored_writes_of_small_slices_arrive_whole_and_in_order() {
        let pki = pki();
        let (mut server, mut client) = pair(&pki).await;
        let parts: Vec<Vec<u8>> = (0..200).map(|i| pattern(1 + i * 7, i as u8)).collect();
        let mut slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
        let expected: Vec<u8> = parts.concat();
        let mut bufs = &mut slices[..];
        while !bufs.is_empty() {
            let n = server.write_vectored(bufs).await.unwrap();
            assert!(n > 0);
            io::IoSlice::advance_slices(&mut bufs, n);
        }
        server.flush().await.unwrap();
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert!(got == expected);
    }

    #[tokio::test]
    async fn a_quiet_connection_holds_no_buffers_and_wakes_for_the_next_bytes() {
        let pki = pki();
        let (mut server, mut client) = pair(&pki).await;
        for round in 0..3u8 {
            client.write_all(&pattern(40_000, round)).await.unwrap();
            client.flush().await.unwrap();
            let mut got = vec![0u8; 40_000];
            server.read_exact(&mut got).await.unwrap();
            assert!(got == pattern(40_000, round));
            server.write_all(b"ok").await.unwrap();
            let mut ok = [0u8; 2];
            client.read_exact(&mut ok).await.unwrap();
            // Now nothing is on its way: a read waits, and the buffers are given back.
            let mut one = [0u8; 1];
            let waited =
                tokio::time::timeout(Duration::from_millis(50), server.read(&mut one)).await;
            assert!(waited.is_err(), "nothing to read");
            assert_eq!(
                (
                    server.incoming.capacity(),
                    server.plain.capacity(),
                    server.outgoing.capacity()
                ),
                (0, 0, 0),
                "round {round}: the idle connection keeps no buffer"
            );
        }
        // A key update from the client is answered, and traffic goes on under the new keys.
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"after the update").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 16];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after the update");
        server.write_all(b"answer").await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"answer");
        // The client's close_notify ends the server's stream cleanly.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
    }

    use std::time::Duration;

    #[tokio::test]
    async fn garbage_and_torn_records_are_errors_not_data() {
        let pki = pki();
        // Records whose bytes were changed fail their authentication check.
        let (mut server, client) = pair(&pki).await;
        let mut tcp = client.into_inner().0;
        tcp.write_all(&[23, 3, 3, 0, 40]).await.unwrap();
        tcp.write_all(&[0x55; 40]).await.unwrap();
        let mut buf = [0u8; 16];
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // A connection cut in the middle of a record is an unexpected end.
        let (mut server, client) = pair(&pki).await;
        let mut tcp = client.into_inner().0;
        tcp.write_all(&[23, 3, 3, 0, 200, 1, 2, 3]).await.unwrap();
        // (Its write side only: closing a socket with unread bytes, the server's session
        // tickets, would reset the connection instead.)
        tcp.shutdown().await.unwrap();
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        // Plain text where a handshake should be is refused.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let e = TlsStream::accept(tcp, pki.server.clone())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }
}

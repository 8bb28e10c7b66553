//! The mesh transport: QUIC (quinn) with mutual TLS (rustls on aws-lc-rs) between the
//! nodes of one cluster.
//!
//! What a caller gets:
//! - [`MeshTransport::bind`] one UDP socket per node, both server and client.
//! - [`MeshTransport::accept`] yields only peers that passed admission, each with its
//!   [`PeerName`] read from its certificate; [`MeshTransport::connect`] returns only a
//!   connection the server admitted, to a server whose certificate names the expected node.
//! - On a [`Connection`]: one framed message per uni stream ([`Connection::send_message`]
//!   / [`Connection::accept_message`]), request/response per bi stream
//!   ([`Connection::request`] / [`Connection::accept_request`] then
//!   [`IncomingRequest::respond`]), and bulk byte transfer ([`Connection::fetch`] /
//!   [`IncomingRequest::stream_from`]) for logs and chunks.
//!
//! Invariants:
//! - **Mutual TLS, one CA.** The server requires a client certificate chaining to the
//!   cluster CA; the client verifies the server's certificate against the same CA and the
//!   expected node name (its DNS SAN). TLS 1.3 only, ALPN [`ALPN`], aws-lc-rs only.
//! - **The name is the certificate's.** After the handshake each side reads the peer's
//!   name from the certificate's only DNS SAN and its cluster id from the subject's `O=`;
//!   a certificate with no or several DNS names, an invalid name, or another cluster id is
//!   refused. The membership layer checks claims against [`Connection::peer_name`]
//!   ([`Connection::check_claim`]).
//! - **Admission is confirmed.** In TLS 1.3 the client finishes its handshake before the
//!   server has checked the client's certificate, so the server sends [`WELCOME`] on its
//!   first uni stream once it has admitted the peer, and `connect` waits for it: a refused
//!   client gets an error from `connect`, not a connection that dies later.
//! - **Everything is bounded** ([`TransportLimits`]): frame size (checked on the length
//!   prefix, before any allocation), fetch size, concurrent streams, flow-control windows,
//!   connections in total and per peer, handshakes in flight, the accept queue, idle time.
//! - **A bad peer costs itself only.** An oversized or malformed frame fails that stream
//!   (stopped with [`STREAM_FRAME_TOO_LARGE`]) and the call returns an error; the connection
//!   and the endpoint carry on. Refusals are logged with the peer's address and reason.
//!
//! Frames are a big-endian `u32` length then that many bytes; the sender finishes the
//! stream after one frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Semaphore, mpsc};

use crate::certs::{self, ClusterPaths};

/// The ALPN protocol both sides must speak.
pub const ALPN: &[u8] = b"crashmesh/1";
/// What a server sends on its first uni stream once it has admitted a client.
pub const WELCOME: &[u8] = b"crashmesh/1 welcome";
/// Connection close code: a normal close.
pub const CLOSE_NORMAL: u32 = 0;
/// Connection close code: the peer was not admitted (reason in the close frame).
pub const CLOSE_REFUSED: u32 = 1;
/// Connection close code: the endpoint is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 2;
/// Stream stop/reset code: a frame over `message_bytes_max`, or a fetch over its limit.
pub const STREAM_FRAME_TOO_LARGE: u32 = 1;
/// Stream stop/reset code: a malformed frame (bytes after the frame).
pub const STREAM_MALFORMED: u32 = 2;
/// Stream reset code: the responder failed while streaming.
pub const STREAM_RESPONDER_FAILED: u32 = 3;
/// Bytes `stream_from` reads and hands to quinn at a time.
const STREAM_WRITE_BYTES: usize = 1024 * 1024;
/// Send buffers one `stream_from` keeps for reuse (each `STREAM_WRITE_BYTES`): more than
/// the send window holds, so the oldest is acknowledged (and free) when it is needed again.
const STREAM_BUFFERS_KEPT_MAX: usize = 16;

/// The limits of one transport; [`TransportLimits::default`] documents each default.
#[derive(Clone, Debug)]
pub struct TransportLimits {
    /// The largest frame (message, request or response) accepted or sent.
    pub message_bytes_max: usize,
    /// How many bi streams, and separately uni streams, a peer may have open at once.
    pub streams_per_connection_max: u32,
    /// Open connections of the endpoint, beyond which new ones are refused.
    pub connections_max: usize,
    /// Inbound connections one peer (by certificate name) may hold at once.
    pub connections_per_peer_max: usize,
    /// Inbound handshakes in progress at once.
    pub handshakes_in_flight_max: usize,
    /// Admitted connections waiting for [`MeshTransport::accept`].
    pub accept_queue_len_max: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Each side pings this often so an idle but healthy connection stays open.
    pub keep_alive_interval: Duration,
    /// How long `connect` waits for the handshake and the server's admission.
    pub connect_timeout: Duration,
    /// How long reading one frame may take once its stream has arrived.
    pub frame_read_timeout: Duration,
    /// Flow-control credit per stream (bytes the peer may send ahead of our reads).
    pub stream_receive_window_bytes: u32,
    /// Flow-control credit per connection, all streams together.
    pub connection_receive_window_bytes: u32,
    /// Bytes we keep unacknowledged in flight per connection.
    pub send_window_bytes: u64,
    /// The largest UDP payload path MTU discovery may try (and the largest we accept).
    pub mtu_upper_bound_bytes: u16,
    /// The UDP socket's kernel send and receive buffers (asked for; the kernel caps them at
    /// `net.core.wmem_max` / `rmem_max`).
    pub socket_buffer_bytes: usize,
    /// UDP GSO (several datagrams per send call). Off by default: measured on loopback,
    /// GSO with 1200..1452-byte packets made ~400-590 MiB/s, and GSO with jumbo packets
    /// lost most of them (black-hole detection then falls back to 1200 bytes), while
    /// one datagram per call lets discovery reach 8952 bytes and made ~700-770 MiB/s.
    pub segmentation_offload: bool,
}

impl Default for TransportLimits {
    fn default() -> TransportLimits {
        TransportLimits {
            // One wire message: protocol's limit (a chunk of evidence plus headroom).
            message_bytes_max: crashmesh_protocol::wire::MESSAGE_BYTES_MAX,
            streams_per_connection_max: 64,
            connections_max: 64,
            connections_per_peer_max: 4,
            handshakes_in_flight_max: 32,
            accept_queue_len_max: 64,
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            frame_read_timeout: Duration::from_secs(30),
            // Windows for bulk log/chunk fetches inside a data centre: 4 MiB per stream is
            // three times the bandwidth-delay product of 10 Gbit/s at 1 ms, so one fetch is
            // never held back by credit. The connection window caps what one peer can make
            // us buffer (8 MiB; at most `connections_max` times that in all), and the send
            // window matches it. Measured on loopback (bench `quic_fetch`): quinn's
            // defaults (1.25 MB stream, unbounded connection, 10 MB send) and 16/64/64 MiB
            // give the same throughput, because the receiving side's CPU is the limit.
            stream_receive_window_bytes: 4 * 1024 * 1024,
            connection_receive_window_bytes: 8 * 1024 * 1024,
            send_window_bytes: 8 * 1024 * 1024,
            // Discovery (PLPMTUD) probes up to this and stays where the path stops: 1500
            // on plain Ethernet, ~9000 with the jumbo frames storage networks run, ~64 KiB
            // on loopback. A lost probe only costs the probe. Measured (bench `quic_fetch`,
            // loopback): an 8952-byte bound made 0.7-0.9 GiB/s, this one 1.2 GiB/s, and
            // with AES-128-GCM first (see `MeshTransport::bind`) 1.7-1.9 GiB/s.
            mtu_upper_bound_bytes: 65_000,
            // A burst of a full congestion window must fit, or the kernel drops datagrams
            // and congestion control reads the drops as a congested path.
            socket_buffer_bytes: 4 * 1024 * 1024,
            segmentation_offload: false,
        }
    }
}

/// A peer's name, as its certificate's DNS SAN states it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerName(String);

impl PeerName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The name as protocol's node id.
    pub fn node_id(&self) -> crashmesh_protocol::wire::NodeId {
        crashmesh_protocol::wire::NodeId(self.0.clone())
    }
}

impl std::fmt::Display for PeerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who this node is in the mesh: its name, certificate chain and key, the cluster CA and
/// the cluster id.
#[derive(Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca_roots: Vec<CertificateDer<'static>>,
    pub cluster_id: String,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> NodeIdentity {
        NodeIdentity {
            name: self.name.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca_roots: self.ca_roots.clone(),
            cluster_id: self.cluster_id.clone(),
        }
    }
}

impl NodeIdentity {
    /// Loads a node's identity as `cluster init` / `cluster issue` wrote it: the CA and
    /// `cluster.json` from `cluster`, `NODE.pem` and `NODE.key` from `node_dir`.
    pub fn load(
        cluster: &ClusterPaths,
        node_dir: &Path,
        name: &str,
    ) -> Result<NodeIdentity, TransportError> {
        let cluster_id = certs::read_cluster_file(&cluster.cluster_file())?.cluster_id;
        Ok(NodeIdentity {
            name: name.to_string(),
            cert_chain: certs::load_certs(&node_dir.join(format!("{name}.pem")))?,
            key: certs::load_key(&node_dir.join(format!("{name}.key")))?,
            ca_roots: certs::load_certs(&cluster.ca_cert())?,
            cluster_id,
        })
    }
}

/// What the transport reports.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("identity: {0}")]
    Identity(String),
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
    #[error("refused by {addr}: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
    #[error("expected peer {expected}, the certificate names {actual}")]
    WrongPeer { expected: String, actual: String },
    #[error("a frame of {length_bytes} bytes is over the limit of {limit_bytes} bytes")]
    FrameTooLarge { length_bytes: u64, limit_bytes: u64 },
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream read: {0}")]
    ReadExact(#[from] quinn::ReadExactError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream already closed")]
    ClosedStream(#[from] quinn::ClosedStream),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl TransportError {
    /// True when the whole connection is gone (as opposed to one stream failing): the
    /// caller should stop using it.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            TransportError::ConnectionLost(_)
                | TransportError::Read(quinn::ReadError::ConnectionLost(_))
                | TransportError::ReadExact(quinn::ReadExactError::ReadError(
                    quinn::ReadError::ConnectionLost(_),
                ))
                | TransportError::Write(quinn::WriteError::ConnectionLost(_))
        )
    }
}

/// One node's QUIC endpoint: accepts admitted peers and connects to others.
pub struct MeshTransport {
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    shared: Arc<Shared>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<(PeerName, Connection)>>,
    accept_task: tokio::task::JoinHandle<()>,
}

/// What the accept loop and the connections share.
struct Shared {
    name: String,
    cluster_id: String,
    limits: TransportLimits,
    /// Inbound connections per peer name, for `connections_per_peer_max`.
    inbound_per_peer: Mutex<HashMap<PeerName, usize>>,
}

impl MeshTransport {
    /// Binds `addr` (UDP) with the default limits.
    pub async fn bind(
        addr: SocketAddr,
        identity: NodeIdentity,
    ) -> Result<MeshTransport, TransportError> {
        MeshTransport::bind_with_limits(addr, identity, TransportLimits::default()).await
    }

    /// Binds `addr` (UDP) with explicit limits. Must run inside a tokio runtime.
    pub async fn bind_with_limits(
        addr: SocketAddr,
        identity: NodeIdentity,
        limits: TransportLimits,
    ) -> Result<MeshTransport, TransportError> {
        assert!(limits.message_bytes_max <= u32::MAX as usize);
        assert!(limits.keep_alive_interval < limits.idle_timeout);
        check_identity(&identity)?;
        let transport_config = Arc::new(transport_config(&limits)?);
        // TLS 1.3 with AES-128-GCM first: on AES-NI machines it is the cheapest suite
        // per byte, and bulk log and chunk fetches are bound by the receiver's CPU.
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let provider = Arc::new(provider);
        let mut roots = rustls::RootCertStore::empty();
        for root in &identity.ca_roots {
            roots.add(root.clone())?;
        }
        let roots = Arc::new(roots);

        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|error| TransportError::Identity(error.to_string()))?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        let server_crypto = QuicServerConfig::try_from(server_tls)
            .map_err(|error| TransportError::Identity(error.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport_config.clone());
        // Nodes keep their addresses; a peer that moves reconnects.
        server_config.migration(false);
        server_config.max_incoming(limits.handshakes_in_flight_max * 2);

        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        let client_crypto = QuicClientConfig::try_from(client_tls)
            .map_err(|error| TransportError::Identity(error.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport_config);

        let mut endpoint_config = quinn::EndpointConfig::default();
        // quinn advertises 1472 by default, which caps path MTU discovery below jumbo frames.
        endpoint_config
            .max_udp_payload_size(limits.mtu_upper_bound_bytes)
            .map_err(|error| TransportError::Identity(format!("mtu_upper_bound_bytes: {error}")))?;
        let socket = std::net::UdpSocket::bind(addr)?;
        enlarge_socket_buffers(&socket, limits.socket_buffer_bytes);
        let endpoint = Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let shared = Arc::new(Shared {
            name: identity.name.clone(),
            cluster_id: identity.cluster_id.clone(),
            limits: limits.clone(),
            inbound_per_peer: Mutex::new(HashMap::new()),
        });
        let (sender, receiver) = mpsc::channel(limits.accept_queue_len_max);
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), shared.clone(), sender));
        Ok(MeshTransport {
            endpoint,
            client_config,
            shared,
            accepted: tokio::sync::Mutex::new(receiver),
            accept_task,
        })
    }

    /// The UDP address actually bound (the port chosen for `:0`).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The next admitted inbound connection with its peer's certificate name; `None` once
    /// the endpoint is closed.
    pub async fn accept(&self) -> Option<(PeerName, Connection)> {
        self.accepted.lock().await.recv().await
    }

    /// Connects to the node `expected_peer_name` at `addr`: the server's certificate must
    /// chain to the cluster CA and name it, and the server must admit us.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected_peer_name: &str,
    ) -> Result<Connection, TransportError> {
        let server_name =
            ServerName::try_from(expected_peer_name.to_string()).map_err(|error| {
                TransportError::Identity(format!("{expected_peer_name:?}: {error}"))
            })?;
        if !matches!(server_name, ServerName::DnsName(_))
            || !certs::is_valid_node_name(expected_peer_name)
        {
            return Err(TransportError::Identity(format!(
                "{expected_peer_name:?} is not a node name"
            )));
        }
        let timeout = self.shared.limits.connect_timeout;
        let connecting =
            self.endpoint
                .connect_with(self.client_config.clone(), addr, expected_peer_name)?;
        let connected = tokio::time::timeout(timeout, async {
            let connection = connecting.await?;
            let connection = match peer_of(&connection, &self.shared.cluster_id) {
                Ok(peer) if peer.as_str() == expected_peer_name => Connection {
                    inner: connection,
                    peer,
                    limits: Arc::new(self.shared.limits.clone()),
                },
                Ok(peer) => {
                    // rustls has checked the name already; this is the pair of that check.
                    connection.close(VarInt::from_u32(CLOSE_REFUSED), b"wrong peer name");
                    return Err(TransportError::WrongPeer {
                        expected: expected_peer_name.to_string(),
                        actual: peer.0,
                    });
                }
                Err(error) => {
                    connection.close(VarInt::from_u32(CLOSE_REFUSED), b"bad certificate");
                    return Err(error);
                }
            };
            // Wait for the server's admission (see the module's invariants).
            let mut welcome = match connection.inner.accept_uni().await {
                Ok(stream) => stream,
                Err(error) => return Err(refusal(addr, error)),
            };
            match read_frame(&mut welcome, WELCOME.len()).await {
                Ok(bytes) if bytes == WELCOME => Ok(connection),
                Ok(_) => {
                    connection
                        .inner
                        .close(VarInt::from_u32(CLOSE_REFUSED), b"bad welcome");
                    Err(TransportError::Malformed("the server's welcome"))
                }
                Err(TransportError::ReadExact(quinn::ReadExactError::ReadError(
                    quinn::ReadError::ConnectionLost(error),
                ))) => Err(refusal(addr, error)),
                Err(error) => Err(error),
            }
        })
        .await;
        match connected {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(TransportError::ConnectionLost(error))) => Err(refusal(addr, error)),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
    }

    /// Waits until every connection has been closed cleanly (after [`MeshTransport::close`]).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    /// How many connections the endpoint has open (inbound and outbound).
    pub fn open_connections(&self) -> usize {
        self.endpoint.open_connections()
    }
}

impl Drop for MeshTransport {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.close();
    }
}

/// A connection to an admitted peer: cheap to clone, every clone the same connection.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: quinn::Connection,
    peer: PeerName,
    limits: Arc<TransportLimits>,
}

impl Connection {
    /// The peer's name, from its certificate.
    pub fn peer_name(&self) -> &PeerName {
        &self.peer
    }

    /// Checks that a member claiming to be `claimed` is the peer this certificate names;
    /// logs and errs otherwise.
    pub fn check_claim(&self, claimed: &str) -> Result<(), TransportError> {
        if claimed == self.peer.as_str() {
            return Ok(());
        }
        tracing::warn!(
            peer = %self.peer, claimed, remote = %self.inner.remote_address(),
            "refusing a message: the sender claims another node's name"
        );
        Err(TransportError::WrongPeer {
            expected: claimed.to_string(),
            actual: self.peer.0.clone(),
        })
    }

    /// The peer's UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// The quinn connection underneath, for what the helpers do not cover.
    pub fn quinn(&self) -> &quinn::Connection {
        &self.inner
    }

    /// Closes the connection with a normal close and a reason.
    pub fn close(&self, reason: &str) {
        self.inner
            .close(VarInt::from_u32(CLOSE_NORMAL), reason.as_bytes());
    }

    /// Resolves when the connection is closed, with why.
    pub async fn closed(&self) -> ConnectionError {
        self.inner.closed().await
    }

    /// Sends one framed message on a new uni stream. The bytes are handed to quinn as they
    /// are (a `Vec` converts without a copy): a message of evidence is up to 1 MiB.
    pub async fn send_message(&self, bytes: impl Into<bytes::Bytes>) -> Result<(), TransportError> {
        self.send_message_parts([bytes.into()]).await
    }

    /// Sends one framed message made of these parts, in order, on a new uni stream; the
    /// peer receives them as one message. Each part is handed to quinn as it is, so a
    /// chunk of evidence goes out without being copied into its message's encoding.
    pub async fn send_message_parts<const N: usize>(
        &self,
        mut parts: [bytes::Bytes; N],
    ) -> Result<(), TransportError> {
        let length: usize = parts.iter().map(bytes::Bytes::len).sum();
        check_frame_length(length, self.limits.message_bytes_max)?;
        let mut send = self.inner.open_uni().await?;
        let length = u32::try_from(length).expect("checked against message_bytes_max");
        send.write_all(&length.to_be_bytes()).await?;
        send.write_all_chunks(&mut parts).await?;
        send.finish()?;
        Ok(())
    }

    /// The next message a peer sent with [`Connection::send_message`], in one buffer. An
    /// oversized or malformed one fails with an error and the connection carries on;
    /// check [`TransportError::is_connection_lost`] to know when to stop.
    pub async fn accept_message(&self) -> Result<bytes::Bytes, TransportError> {
        let mut recv = self.inner.accept_uni().await?;
        self.read_whole_frame(&mut recv)
            .await
            .map(bytes::Bytes::from)
    }

    /// Sends a request on a new bi stream and waits for the framed response.
    pub async fn request(&self, bytes: &[u8]) -> Result<Vec<u8>, TransportError> {
        check_frame_length(bytes.len(), self.limits.message_bytes_max)?;
        let (mut send, mut recv) = self.inner.open_bi().await?;
        write_frame(&mut send, bytes).await?;
        send.finish()?;
        self.read_whole_frame(&mut recv).await
    }

    /// The next request (bi stream) a peer opened, to answer with
    /// [`IncomingRequest::respond`] or [`IncomingRequest::stream_from`].
    pub async fn accept_request(&self) -> Result<IncomingRequest, TransportError> {
        let (send, mut recv) = self.inner.accept_bi().await?;
        let request = self.read_whole_frame(&mut recv).await?;
        Ok(IncomingRequest {
            request,
            send,
            message_bytes_max: self.limits.message_bytes_max,
        })
    }

    /// Sends a request and copies the peer's streamed answer (raw bytes until the end of
    /// the stream, see [`IncomingRequest::stream_from`]) into `sink`; refuses more than
    /// `bytes_max`. Returns the bytes received.
    pub async fn fetch<W: AsyncWrite + Unpin>(
        &self,
        request: &[u8],
        sink: &mut W,
        bytes_max: u64,
    ) -> Result<u64, TransportError> {
        check_frame_length(request.len(), self.limits.message_bytes_max)?;
        let (mut send, mut recv) = self.inner.open_bi().await?;
        write_frame(&mut send, request).await?;
        send.finish()?;
        let mut received_bytes: u64 = 0;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            received_bytes += chunk.bytes.len() as u64;
            if received_bytes > bytes_max {
                let _ = recv.stop(VarInt::from_u32(STREAM_FRAME_TOO_LARGE));
                return Err(TransportError::FrameTooLarge {
                    length_bytes: received_bytes,
                    limit_bytes: bytes_max,
                });
            }
            sink.write_all(&chunk.bytes).await?;
        }
        sink.flush().await?;
        Ok(received_bytes)
    }

    /// Reads one frame, then the end of the stream, within `frame_read_timeout`.
    async fn read_whole_frame(
        &self,
        recv: &mut quinn::RecvStream,
    ) -> Result<Vec<u8>, TransportError> {
        let timeout = self.limits.frame_read_timeout;
        let outcome = tokio::time::timeout(timeout, async {
            let bytes = read_frame(recv, self.limits.message_bytes_max).await?;
            let mut trailing = [0u8; 1];
            match recv.read(&mut trailing).await? {
                None => Ok(bytes),
                Some(_) => {
                    let _ = recv.stop(VarInt::from_u32(STREAM_MALFORMED));
                    Err(TransportError::Malformed("bytes after the frame"))
                }
            }
        })
        .await;
        match outcome {
            Ok(result) => {
                if let Err(error) = &result
                    && !error.is_connection_lost()
                {
                    tracing::warn!(peer = %self.peer, %error, "refused a frame");
                }
                result
            }
            Err(_) => {
                let _ = recv.stop(VarInt::from_u32(STREAM_MALFORMED));
                tracing::warn!(peer = %self.peer, "a frame took longer than {timeout:?}");
                Err(TransportError::Timeout(timeout))
            }
        }
    }
}

/// A request a peer sent on a bi stream, waiting for its answer.
pub struct IncomingRequest {
    /// The request's bytes (at most `message_bytes_max`).
    pub request: Vec<u8>,
    send: quinn::SendStream,
    message_bytes_max: usize,
}

impl IncomingRequest {
    /// Answers with one frame.
    pub async fn respond(mut self, bytes: &[u8]) -> Result<(), TransportError> {
        check_frame_length(bytes.len(), self.message_bytes_max)?;
        write_frame(&mut self.send, bytes).await?;
        self.send.finish()?;
        Ok(())
    }

    /// Answers a [`Connection::fetch`]: copies `reader` to the stream until its end.
    /// Returns the bytes sent. If reading fails, the stream is reset so the fetcher sees
    /// an error rather than a short answer.
    pub async fn stream_from<R: AsyncRead + Unpin>(
        mut self,
        reader: &mut R,
    ) -> Result<u64, TransportError> {
        // Large reads amortize the per-write cost; quinn splits them into packets. Each
        // read lands in a buffer of its own that is handed to quinn as it is (a copy less
        // than `write_all`, which copies into a buffer quinn allocates anyway). A buffer is
        // reused once quinn has dropped every piece of it (acknowledged): a fresh MiB per
        // read cost page faults and zeroing (glibc maps allocations this large afresh) and
        // held `quic_fetch` at 1.5-1.9 GiB/s; cycling a few buffers made 2.9-3.2.
        let mut sent_bytes: u64 = 0;
        let mut kept: std::collections::VecDeque<bytes::Bytes> = std::collections::VecDeque::new();
        loop {
            let mut buffer = match kept.pop_front().map(bytes::Bytes::try_into_mut) {
                Some(Ok(mut free)) => {
                    free.clear();
                    free
                }
                Some(Err(in_flight)) => {
                    kept.push_front(in_flight);
                    bytes::BytesMut::with_capacity(STREAM_WRITE_BYTES)
                }
                None => bytes::BytesMut::with_capacity(STREAM_WRITE_BYTES),
            };
            if buffer.capacity() < STREAM_WRITE_BYTES {
                buffer.reserve(STREAM_WRITE_BYTES);
            }
            let read = match reader.read_buf(&mut buffer).await {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) => {
                    let _ = self.send.reset(VarInt::from_u32(STREAM_RESPONDER_FAILED));
                    return Err(error.into());
                }
            };
            let piece = buffer.freeze();
            if kept.len() == STREAM_BUFFERS_KEPT_MAX {
                kept.pop_front();
            }
            kept.push_back(piece.clone());
            self.send.write_chunk(piece).await?;
            sent_bytes += read as u64;
        }
        self.send.finish()?;
        Ok(sent_bytes)
    }

    /// Refuses the request: the requester's call fails with a reset stream.
    pub fn refuse(mut self) {
        let _ = self.send.reset(VarInt::from_u32(STREAM_RESPONDER_FAILED));
    }
}

/// Writes one frame (length prefix and bytes), without finishing the stream.
pub async fn write_frame(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), TransportError> {
    let length = u32::try_from(bytes.len()).map_err(|_| TransportError::FrameTooLarge {
        length_bytes: bytes.len() as u64,
        limit_bytes: u32::MAX as u64,
    })?;
    send.write_all(&length.to_be_bytes()).await?;
    send.write_all(bytes).await?;
    Ok(())
}

/// Reads one frame; a length prefix over `message_bytes_max` stops the stream and fails
/// before anything is allocated for it.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    message_bytes_max: usize,
) -> Result<Vec<u8>, TransportError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let length = u32::from_be_bytes(prefix) as usize;
    if length > message_bytes_max {
        let _ = recv.stop(VarInt::from_u32(STREAM_FRAME_TOO_LARGE));
        return Err(TransportError::FrameTooLarge {
            length_bytes: length as u64,
            limit_bytes: message_bytes_max as u64,
        });
    }
    // Copied out of quinn's received packets as they come, into memory not cleared first.
    let mut bytes = Vec::with_capacity(length);
    while bytes.len() < length {
        match recv.read_chunk(length - bytes.len(), true).await? {
            Some(chunk) => bytes.extend_from_slice(&chunk.bytes),
            None => {
                return Err(TransportError::ReadExact(
                    quinn::ReadExactError::FinishedEarly(bytes.len()),
                ));
            }
        }
    }
    Ok(bytes)
}

fn check_frame_length(length: usize, message_bytes_max: usize) -> Result<(), TransportError> {
    if length > message_bytes_max {
        return Err(TransportError::FrameTooLarge {
            length_bytes: length as u64,
            limit_bytes: message_bytes_max as u64,
        });
    }
    Ok(())
}

fn transport_config(limits: &TransportLimits) -> Result<TransportConfig, TransportError> {
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(limits.streams_per_connection_max.into())
        .max_concurrent_uni_streams(limits.streams_per_connection_max.into())
        .max_idle_timeout(Some(
            limits
                .idle_timeout
                .try_into()
                .map_err(|_| TransportError::Identity("idle_timeout too large".into()))?,
        ))
        .keep_alive_interval(Some(limits.keep_alive_interval))
        .stream_receive_window(limits.stream_receive_window_bytes.into())
        .receive_window(limits.connection_receive_window_bytes.into())
        .send_window(limits.send_window_bytes)
        // The mesh does not use unreliable datagrams: no buffer for them.
        .datagram_receive_buffer_size(None);
    // See `TransportLimits::segmentation_offload`.
    config.enable_segmentation_offload(limits.segmentation_offload);
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(limits.mtu_upper_bound_bytes);
    config.mtu_discovery_config(Some(mtu));
    Ok(config)
}

/// The identity must be usable: a certificate whose only DNS name is `name`, and a cluster id.
fn check_identity(identity: &NodeIdentity) -> Result<(), TransportError> {
    if !certs::is_valid_node_name(&identity.name) {
        return Err(TransportError::Identity(format!(
            "{:?} is not a node name",
            identity.name
        )));
    }
    if !certs::is_valid_cluster_id(&identity.cluster_id) {
        return Err(TransportError::Identity(format!(
            "{:?} is not a cluster id",
            identity.cluster_id
        )));
    }
    let Some(leaf) = identity.cert_chain.first() else {
        return Err(TransportError::Identity("no certificate".into()));
    };
    let (name, cluster_id) = names_of_certificate(leaf).map_err(TransportError::Identity)?;
    if name != identity.name || cluster_id.as_deref() != Some(identity.cluster_id.as_str()) {
        return Err(TransportError::Identity(format!(
            "the certificate names {name:?} of cluster {cluster_id:?}, not {:?} of {:?}",
            identity.name, identity.cluster_id
        )));
    }
    if identity.ca_roots.is_empty() {
        return Err(TransportError::Identity("no CA certificate".into()));
    }
    Ok(())
}

/// The peer's name from its (already verified) certificate, and a check of its cluster id.
fn peer_of(connection: &quinn::Connection, cluster_id: &str) -> Result<PeerName, TransportError> {
    let identity = connection
        .peer_identity()
        .ok_or_else(|| TransportError::PeerCertificate("no certificate".into()))?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TransportError::PeerCertificate("not an X.509 chain".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| TransportError::PeerCertificate("empty chain".into()))?;
    let (name, peer_cluster_id) =
        names_of_certificate(leaf).map_err(TransportError::PeerCertificate)?;
    if peer_cluster_id.as_deref() != Some(cluster_id) {
        return Err(TransportError::PeerCertificate(format!(
            "cluster {peer_cluster_id:?}, not ours ({cluster_id:?})"
        )));
    }
    Ok(PeerName(name))
}

/// A certificate's only DNS SAN (a valid node name) and its subject's `O=` (the cluster id).
pub fn names_of_certificate(
    certificate: &CertificateDer<'_>,
) -> Result<(String, Option<String>), String> {
    let parsed = webpki::EndEntityCert::try_from(certificate)
        .map_err(|error| format!("unparsable certificate: {error}"))?;
    let mut names = parsed.valid_dns_names();
    let name = names
        .next()
        .ok_or_else(|| "no DNS name in the certificate".to_string())?
        .to_string();
    if names.next().is_some() {
        return Err("more than one DNS name in the certificate".into());
    }
    if !certs::is_valid_node_name(&name) {
        return Err(format!("{name:?} is not a node name"));
    }
    let organization = organization_of_name(parsed.subject())?;
    Ok((name, organization))
}

/// The first `O=` (organizationName, 2.5.4.10) of a DER `Name`'s contents (the RDN
/// sequence without its outer tag). Bounded: every length is checked against the input.
fn organization_of_name(name: &[u8]) -> Result<Option<String>, String> {
    const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
    let mut rdns = name;
    while !rdns.is_empty() {
        let (tag, set, rest) = der_element(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return Err("subject: an RDN that is not a SET".into());
        }
        let mut attributes = set;
        while !attributes.is_empty() {
            let (tag, attribute, rest) = der_element(attributes)?;
            attributes = rest;
            if tag != 0x30 {
                return Err("subject: an attribute that is not a SEQUENCE".into());
            }
            let (oid_tag, oid, value) = der_element(attribute)?;
            if oid_tag != 0x06 || oid != OID_ORGANIZATION {
                continue;
            }
            let (value_tag, value, _) = der_element(value)?;
            // UTF8String, PrintableString, IA5String.
            if !matches!(value_tag, 0x0c | 0x13 | 0x16) {
                return Err("subject: O= of an unexpected string type".into());
            }
            return String::from_utf8(value.to_vec())
                .map(Some)
                .map_err(|_| "subject: O= not UTF-8".into());
        }
    }
    Ok(None)
}

/// One DER element: (tag, contents, the rest). Single-byte tags, definite lengths.
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let truncated = || "subject: truncated DER".to_string();
    let (&tag, rest) = input.split_first().ok_or_else(truncated)?;
    let (&first, rest) = rest.split_first().ok_or_else(truncated)?;
    let (length, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 2 || rest.len() < count {
            return Err("subject: unsupported DER length".into());
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | byte as usize);
        (length, &rest[count..])
    };
    if rest.len() < length {
        return Err(truncated());
    }
    Ok((tag, &rest[..length], &rest[length..]))
}

/// Best effort: a socket with the kernel's default buffers still works, only slower.
fn enlarge_socket_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd as _;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid socket descriptor and a c_int option value of the right size.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            tracing::debug!(
                option,
                error = %std::io::Error::last_os_error(),
                "could not enlarge a UDP socket buffer"
            );
        }
    }
}

fn refusal(addr: SocketAddr, error: ConnectionError) -> TransportError {
    let reason = match &error {
        ConnectionError::ApplicationClosed(close) => {
            String::from_utf8_lossy(&close.reason).into_owned()
        }
        other => other.to_string(),
    };
    TransportError::Refused { addr, reason }
}

async fn accept_loop(
    endpoint: Endpoint,
    shared: Arc<Shared>,
    admitted: mpsc::Sender<(PeerName, Connection)>,
) {
    let handshakes = Arc::new(Semaphore::new(shared.limits.handshakes_in_flight_max));
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        if endpoint.open_connections() >= shared.limits.connections_max {
            tracing::warn!(%remote, "refusing a connection: connections_max reached");
            incoming.refuse();
            continue;
        }
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "refusing a connection: handshakes_in_flight_max reached");
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let admitted = admitted.clone();
        tokio::spawn(async move {
            let outcome = admit(incoming, &shared).await;
            drop(permit);
            match outcome {
                Ok((peer, connection)) => {
                    if admitted.send((peer, connection.clone())).await.is_err() {
                        connection
                            .inner
                            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
                    }
                }
                Err(error) => tracing::warn!(%remote, %error, "refused a peer"),
            }
        });
    }
}

/// Handshake, name, cluster, per-peer limit, then the welcome.
async fn admit(
    incoming: quinn::Incoming,
    shared: &Arc<Shared>,
) -> Result<(PeerName, Connection), TransportError> {
    let connection = incoming.await?;
    let peer = match peer_of(&connection, &shared.cluster_id) {
        Ok(peer) => peer,
        Err(error) => {
            connection.close(VarInt::from_u32(CLOSE_REFUSED), b"bad certificate");
            return Err(error);
        }
    };
    {
        let mut per_peer = shared.inbound_per_peer.lock().expect("not poisoned");
        let count = per_peer.entry(peer.clone()).or_insert(0);
        if *count >= shared.limits.connections_per_peer_max {
            connection.close(
                VarInt::from_u32(CLOSE_REFUSED),
                b"too many connections from this peer",
            );
            return Err(TransportError::Refused {
                addr: connection.remote_address(),
                reason: format!("{peer} is over connections_per_peer_max"),
            });
        }
        *count += 1;
    }
    // Give the slot back when the connection ends, however it ends.
    let watcher = connection.clone();
    let watcher_shared = shared.clone();
    let watcher_peer = peer.clone();
    tokio::spawn(async move {
        watcher.closed().await;
        let mut per_peer = watcher_shared
            .inbound_per_peer
            .lock()
            .expect("not poisoned");
        if let Some(count) = per_peer.get_mut(&watcher_peer) {
            *count -= 1;
            if *count == 0 {
                per_peer.remove(&watcher_peer);
            }
        }
    });
    let mut welcome = connection.open_uni().await?;
    write_frame(&mut welcome, WELCOME).await?;
    welcome.finish()?;
    let connection = Connection {
        inner: connection,
        peer: peer.clone(),
        limits: Arc::new(shared.limits.clone()),
    };
    Ok((peer, connection))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_TIMEOUT: Duration = Duration::from_secs(20);

    /// A cluster made by the real `cluster init`, in a temporary directory.
    struct TestCluster {
        _dir: tempfile::TempDir,
        paths: ClusterPaths,
    }

    impl TestCluster {
        fn new(cluster_id: &str) -> TestCluster {
            let dir = tempfile::tempdir().unwrap();
            let paths = ClusterPaths::of_data_dir(dir.path());
            certs::init_cluster(&paths, Some(cluster_id)).unwrap();
            TestCluster { _dir: dir, paths }
        }

        /// A node identity issued by the real `cluster issue`.
        fn identity(&self, node: &str) -> NodeIdentity {
            certs::issue_node(&self.paths, node, &self.paths.nodes_dir()).unwrap();
            NodeIdentity::load(&self.paths, &self.paths.nodes_dir(), node).unwrap()
        }
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    async fn bind(identity: NodeIdentity) -> MeshTransport {
        MeshTransport::bind(loopback(), identity).await.unwrap()
    }

    async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(TEST_TIMEOUT, future)
            .await
            .expect("finished in time")
    }

    /// Connects `client` to `server` (named `server_name`) and returns both ends.
    async fn connected(
        client: &MeshTransport,
        server: &MeshTransport,
        server_name: &str,
    ) -> (Connection, PeerName, Connection) {
        let addr = server.local_addr().unwrap();
        let (client_end, accepted) =
            within(async { tokio::join!(client.connect(addr, server_name), server.accept()) })
                .await;
        let (peer, server_end) = accepted.expect("accepted");
        (client_end.unwrap(), peer, server_end)
    }

    /// Asserts the transport yields no admitted connection for a while.
    async fn accepts_nothing(server: &MeshTransport) {
        let waited = tokio::time::timeout(Duration::from_millis(300), server.accept()).await;
        assert!(waited.is_err(), "a connection was admitted: {waited:?}");
    }

    /// A request and its answer on `client_end`, served by `server_end`.
    async fn ping(client_end: &Connection, server_end: &Connection) {
        let serve = async {
            let incoming = server_end.accept_request().await.unwrap();
            assert_eq!(incoming.request, b"ping");
            incoming.respond(b"pong").await.unwrap();
        };
        let (answer, ()) = within(async { tokio::join!(client_end.request(b"ping"), serve) }).await;
        assert_eq!(answer.unwrap(), b"pong");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_and_requests_go_both_ways_between_certificate_names() {
        let cluster = TestCluster::new("test-cluster");
        let node_1 = bind(cluster.identity("node-1")).await;
        let node_2 = bind(cluster.identity("node-2")).await;
        let (at_2, peer_seen_by_1, at_1) = connected(&node_2, &node_1, "node-1").await;
        assert_eq!(peer_seen_by_1.as_str(), "node-2");
        assert_eq!(at_1.peer_name().as_str(), "node-2");
        assert_eq!(at_2.peer_name().as_str(), "node-1");
        assert!(at_1.check_claim("node-2").is_ok());
        assert!(at_1.check_claim("node-3").is_err());

        at_2.send_message(&b"hello from node-2"[..]).await.unwrap();
        assert_eq!(
            within(at_1.accept_message()).await.unwrap(),
            &b"hello from node-2"[..]
        );
        at_1.send_message(&b"hello back"[..]).await.unwrap();
        assert_eq!(
            within(at_2.accept_message()).await.unwrap(),
            &b"hello back"[..]
        );
        ping(&at_2, &at_1).await;
        ping(&at_1, &at_2).await;
        // An empty message is a message too.
        at_2.send_message(&b""[..]).await.unwrap();
        assert_eq!(within(at_1.accept_message()).await.unwrap(), &b""[..]);
        // A message sent in parts (a chunk beside its encoding, empty parts skipped)
        // arrives as one, larger than a packet.
        let chunk: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let parts = [
            bytes::Bytes::from_static(b"head:"),
            bytes::Bytes::from(chunk.clone()),
            bytes::Bytes::new(),
            bytes::Bytes::from_static(b":tail"),
        ];
        at_2.send_message_parts(parts).await.unwrap();
        let mut whole = b"head:".to_vec();
        whole.extend_from_slice(&chunk);
        whole.extend_from_slice(b":tail");
        assert_eq!(within(at_1.accept_message()).await.unwrap(), whole);
        // Their sum is checked against the limit as one message's length.
        let over = [
            bytes::Bytes::from(vec![0; TransportLimits::default().message_bytes_max]),
            bytes::Bytes::from_static(b"!"),
        ];
        assert!(matches!(
            at_2.send_message_parts(over).await,
            Err(TransportError::FrameTooLarge { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetch_streams_large_answers_and_refuses_past_its_limit() {
        let cluster = TestCluster::new("test-cluster");
        let node_1 = bind(cluster.identity("node-1")).await;
        let node_2 = bind(cluster.identity("node-2")).await;
        let (at_2, _, at_1) = connected(&node_2, &node_1, "node-1").await;
        // Over the message limit on purpose: fetch is not framed.
        let log: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let serve = async {
            let incoming = at_1.accept_request().await.unwrap();
            assert_eq!(incoming.request, b"log node-1 0..");
            incoming.stream_from(&mut &log[..]).await.unwrap()
        };
        let mut fetched = Vec::new();
        let (received, sent) = within(async {
            tokio::join!(
                at_2.fetch(b"log node-1 0..", &mut fetched, 64 * 1024 * 1024),
                serve
            )
        })
        .await;
        assert_eq!(received.unwrap(), log.len() as u64);
        assert_eq!(sent, log.len() as u64);
        assert!(fetched == log);

        let serve = async {
            let incoming = at_1.accept_request().await.unwrap();
            // The answer fits in the send window, so the responder may finish before the
            // fetcher stops the stream: either outcome is fine for it.
            incoming.stream_from(&mut &log[..]).await
        };
        let mut fetched = Vec::new();
        let (received, served) =
            within(async { tokio::join!(at_2.fetch(b"again", &mut fetched, 1024 * 1024), serve) })
                .await;
        assert!(matches!(
            received,
            Err(TransportError::FrameTooLarge { .. })
        ));
        let _ = served;
        ping(&at_2, &at_1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_certificate_of_another_ca_is_refused_both_ways() {
        let cluster = TestCluster::new("test-cluster");
        // Another CA with the same cluster id and node names: only the CA differs.
        let impostors = TestCluster::new("test-cluster");
        let node_1 = bind(cluster.identity("node-1")).await;
        let node_2 = bind(cluster.identity("node-2")).await;
        let genuine_roots = cluster.identity("node-9").ca_roots;

        // A client with another CA's certificate (trusting ours, so it gets as far as
        // presenting it): the server refuses it and `connect` says so.
        let mut impostor_client = impostors.identity("node-2");
        impostor_client.ca_roots = genuine_roots.clone();
        let impostor_client = bind(impostor_client).await;
        let refused = within(impostor_client.connect(node_1.local_addr().unwrap(), "node-1")).await;
        match refused {
            Err(TransportError::Refused { reason, .. }) => {
                assert!(reason.contains("certificate"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        accepts_nothing(&node_1).await;

        // A server with another CA's certificate: our client refuses it.
        let mut impostor_server = impostors.identity("node-1");
        impostor_server.ca_roots = genuine_roots;
        let impostor_server = bind(impostor_server).await;
        let refused = within(node_2.connect(impostor_server.local_addr().unwrap(), "node-1")).await;
        let error = refused.unwrap_err().to_string();
        // Same issuer name, another key: the chain's signature does not verify.
        assert!(error.contains("invalid peer certificate"), "{error}");
        accepts_nothing(&impostor_server).await;

        // The genuine pair still works.
        let (at_2, _, at_1) = connected(&node_2, &node_1, "node-1").await;
        ping(&at_2, &at_1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_expecting_one_node_refuses_another() {
        let cluster = TestCluster::new("test-cluster");
        let node_1 = bind(cluster.identity("node-1")).await;
        let node_3 = bind(cluster.identity("node-3")).await;
        let refused = within(node_1.connect(node_3.local_addr().unwrap(), "node-2")).await;
        let error = refused.unwrap_err().to_string();
        assert!(
            error.contains("NotValidForName") || error.contains("name"),
            "{error}"
        );
        accepts_nothing(&node_3).await;
        // A name that could not be a node is refused before any packet.
        assert!(matches!(
            node_1.connect(node_3.local_addr().unwrap(), "Node 3").await,
            Err(TransportError::Identity(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversized_frame_fails_its_stream_and_the_rest_carries_on() {
        let cluster = TestCluster::new("test-cluster");
        let limits = TransportLimits {
            message_bytes_max: 64 * 1024,
            ..TransportLimits::default()
        };
        let node_1 =
            MeshTransport::bind_with_limits(loopback(), cluster.identity("node-1"), limits)
                .await
                .unwrap();
        let node_2 = bind(cluster.identity("node-2")).await;
        let node_3 = bind(cluster.identity("node-3")).await;
        let (at_2, _, at_1) = connected(&node_2, &node_1, "node-1").await;

        // A uni stream announcing 100 MiB: refused from its length prefix alone.
        let mut raw = at_2.quinn().open_uni().await.unwrap();
        raw.write_all(&(100u32 * 1024 * 1024).to_be_bytes())
            .await
            .unwrap();
        // Not finished: the sender would go on, and must learn that its stream was stopped.
        raw.write_all(&[7u8; 4096]).await.unwrap();
        let error = within(at_1.accept_message()).await.unwrap_err();
        assert!(
            matches!(error, TransportError::FrameTooLarge { length_bytes, limit_bytes }
                if length_bytes == 100 * 1024 * 1024 && limit_bytes == 64 * 1024),
            "{error}"
        );
        assert!(!error.is_connection_lost());
        let stopped = within(raw.stopped()).await.unwrap();
        assert_eq!(stopped, Some(VarInt::from_u32(STREAM_FRAME_TOO_LARGE)));

        // The same on a bi stream, and a frame followed by garbage.
        let (mut raw_send, _raw_recv) = at_2.quinn().open_bi().await.unwrap();
        raw_send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let _ = raw_send.finish();
        assert!(matches!(
            within(at_1.accept_request()).await,
            Err(TransportError::FrameTooLarge { .. })
        ));
        let mut raw = at_2.quinn().open_uni().await.unwrap();
        raw.write_all(&[0, 0, 0, 2, b'o', b'k', b'!'])
            .await
            .unwrap();
        let _ = raw.finish();
        assert!(matches!(
            within(at_1.accept_message()).await,
            Err(TransportError::Malformed(_))
        ));

        // Our own side refuses to send what the peer would refuse.
        let too_big = vec![0u8; 2 * 1024 * 1024];
        assert!(matches!(
            at_2.send_message(too_big.clone()).await,
            Err(TransportError::FrameTooLarge { .. })
        ));

        // The connection carries on, and so does the endpoint for others.
        at_2.send_message(&b"still here"[..]).await.unwrap();
        assert_eq!(
            within(at_1.accept_message()).await.unwrap(),
            &b"still here"[..]
        );
        ping(&at_2, &at_1).await;
        let (at_3, peer, at_1_from_3) = connected(&node_3, &node_1, "node-1").await;
        assert_eq!(peer.as_str(), "node-3");
        ping(&at_3, &at_1_from_3).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_datagrams_do_not_disturb_the_endpoint() {
        let cluster = TestCluster::new("test-cluster");
        let node_1 = bind(cluster.identity("node-1")).await;
        let node_2 = bind(cluster.identity("node-2")).await;
        let (at_2, _, at_1) = connected(&node_2, &node_1, "node-1").await;

        let target = node_1.local_addr().unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000usize {
            // xorshift: deterministic noise, some of it shaped like QUIC long headers.
            let length = 1 + round * 7 % 1400;
            let mut datagram = Vec::with_capacity(length);
            for _ in 0..length {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                datagram.push(state as u8);
            }
            if round % 3 == 0 {
                datagram[0] = 0xc0 | (datagram[0] & 0x0f);
                if length >= 5 {
                    datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
                }
            }
            socket.send_to(&datagram, target).unwrap();
        }
        // The existing connection and a new one both work.
        ping(&at_2, &at_1).await;
        let node_3 = bind(cluster.identity("node-3")).await;
        let (at_3, _, at_1_from_3) = connected(&node_3, &node_1, "node-1").await;
        ping(&at_3, &at_1_from_3).await;
        accepts_nothing(&node_1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_over_its_connection_limit_is_refused_until_one_closes() {
        let cluster = TestCluster::new("test-cluster");
        let limits = TransportLimits {
            connections_per_peer_max: 2,
            ..TransportLimits::default()
        };
        let node_1 =
            MeshTransport::bind_with_limits(loopback(), cluster.identity("node-1"), limits)
                .await
                .unwrap();
        let node_2 = bind(cluster.identity("node-2")).await;
        let (first, _, _first_at_1) = connected(&node_2, &node_1, "node-1").await;
        let (_second, _, _second_at_1) = connected(&node_2, &node_1, "node-1").await;
        let refused = within(node_2.connect(node_1.local_addr().unwrap(), "node-1")).await;
        match refused {
            Err(TransportError::Refused { reason, .. }) => {
                assert!(reason.contains("too many"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        first.close("done");
        // The slot comes back once the server has seen the close.
        let mut admitted = false;
        for _ in 0..50 {
            if let Ok(connection) = node_2.connect(node_1.local_addr().unwrap(), "node-1").await {
                let _ = within(node_1.accept()).await;
                drop(connection);
                admitted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(admitted);
    }

    #[test]
    fn certificate_names_come_from_the_san_and_the_subject() {
        let cluster = TestCluster::new("prod-7");
        let identity = cluster.identity("storage-3");
        let (name, cluster_id) = names_of_certificate(&identity.cert_chain[0]).unwrap();
        assert_eq!(name, "storage-3");
        assert_eq!(cluster_id.as_deref(), Some("prod-7"));
        // The CA has no DNS name: not a node certificate.
        assert!(names_of_certificate(&identity.ca_roots[0]).is_err());
        // An identity whose name is not its certificate's is refused at bind.
        let mut wrong = identity.clone();
        wrong.name = "storage-4".into();
        assert!(matches!(
            check_identity(&wrong),
            Err(TransportError::Identity(_))
        ));
        let mut wrong = identity;
        wrong.cluster_id = "prod-8".into();
        assert!(check_identity(&wrong).is_err());
    }

    #[test]
    fn the_subject_reader_survives_any_truncation() {
        let cluster = TestCluster::new("prod-7");
        let identity = cluster.identity("node-1");
        let parsed = webpki::EndEntityCert::try_from(&identity.cert_chain[0]).unwrap();
        let subject = parsed.subject().to_vec();
        assert_eq!(
            organization_of_name(&subject).unwrap().as_deref(),
            Some("prod-7")
        );
        for cut in 0..subject.len() {
            let _ = organization_of_name(&subject[..cut]);
            let mut flipped = subject.clone();
            flipped[cut] ^= 0xff;
            let _ = organization_of_name(&flipped);
        }
        assert_eq!(organization_of_name(&[]).unwrap(), None);
    }
}

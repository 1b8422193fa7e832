//! Node-to-node transport: one QUIC endpoint (quinn, mutual TLS) per node. Datagrams carry
//! gossip, whose own timeouts must measure liveness (no retransmits); bidirectional streams
//! carry request/response RPC. Connections are cached per peer and redialled when they fail.
//!
//! The transport moves bytes; [`crate::cluster::rpc`] gives them types and a version envelope.

pub mod certs;
pub mod faults;
pub mod reset_key;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use faults::FaultFilter;
use tls::QuicConfigs;

/// Largest RPC request or response accepted from a peer.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Datagrams queued for a peer while its connection is being set up; older ones are dropped
/// (gossip tolerates loss, and stale probes are worthless anyway).
const MAX_QUEUED_DATAGRAMS: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How many gossip datagrams may wait for the membership task before new ones are dropped.
const DATAGRAM_CHANNEL: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot dial {peer}: {reason}")]
    Connect { peer: SocketAddr, reason: String },
    #[error("connection to {peer} failed: {source}")]
    Connection {
        peer: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error("stream to {peer} failed: {reason}")]
    Stream { peer: SocketAddr, reason: String },
    #[error("{peer} did not answer within {timeout:?}")]
    TimedOut { peer: SocketAddr, timeout: Duration },
    #[error("traffic to {peer} is blocked by the fault filter")]
    Blocked { peer: SocketAddr },
    #[error("cannot bind the transport to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A received gossip datagram and the address of the peer that sent it.
#[derive(Debug)]
pub struct Datagram {
    pub from: SocketAddr,
    pub payload: Bytes,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Answers RPC requests arriving from peers.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(&self, from: SocketAddr, request: Bytes) -> BoxFuture<'_, Bytes>;
}

enum PeerSlot {
    Connected(quinn::Connection),
    /// A dial is under way; datagrams wait for it.
    Dialling(Vec<Bytes>),
}

struct Inner {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    peers: Mutex<HashMap<SocketAddr, PeerSlot>>,
    datagrams: mpsc::Sender<Datagram>,
    rpc_handler: OnceLock<Arc<dyn RpcHandler>>,
    faults: FaultFilter,
}

/// The node's QUIC endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Binds the endpoint and starts accepting peers. Gossip datagrams arrive on the returned
    /// channel; install the RPC handler with [`Transport::set_rpc_handler`].
    pub fn bind(
        addr: SocketAddr,
        configs: QuicConfigs,
        endpoint_config: quinn::EndpointConfig,
    ) -> Result<(Transport, mpsc::Receiver<Datagram>), TransportError> {
        let bind_error = |source| TransportError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
        let mut endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(configs.server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        endpoint.set_default_client_config(configs.client);
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind { addr, source })?;
        let (datagrams, receiver) = mpsc::channel(DATAGRAM_CHANNEL);
        let transport = Transport {
            inner: Arc::new(Inner {
                endpoint,
                local_addr,
                peers: Mutex::new(HashMap::new()),
                datagrams,
                rpc_handler: OnceLock::new(),
                faults: FaultFilter::default(),
            }),
        };
        tokio::spawn(transport.clone().accept_loop());
        Ok((transport, receiver))
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn faults(&self) -> &FaultFilter {
        &self.inner.faults
    }

    /// Installs the RPC handler; requests that arrive before it is set are refused.
    pub fn set_rpc_handler(&self, handler: Arc<dyn RpcHandler>) {
        let _ = self.inner.rpc_handler.set(handler);
    }

    /// Sends a gossip datagram without waiting: on a cached connection at once, otherwise after
    /// dialling (queued meanwhile). Failures are logged, never returned: gossip tolerates loss.
    pub fn send_datagram(&self, to: SocketAddr, payload: Bytes) {
        if self.inner.faults.blocks(to) {
            return;
        }
        let mut peers = self.lock_peers();
        match peers.get_mut(&to) {
            Some(PeerSlot::Connected(conn)) if conn.close_reason().is_none() => {
                if let Err(err) = conn.send_datagram(payload) {
                    tracing::debug!(peer = %to, error = %err, "gossip datagram not sent");
                }
            }
            Some(PeerSlot::Dialling(queue)) => {
                if queue.len() >= MAX_QUEUED_DATAGRAMS {
                    queue.remove(0);
                }
                queue.push(payload);
            }
            _ => {
                peers.insert(to, PeerSlot::Dialling(vec![payload]));
                drop(peers);
                let transport = self.clone();
                tokio::spawn(async move { transport.dial_for_datagrams(to).await });
            }
        }
    }

    /// Sends one request on a new stream and waits for the whole response.
    pub async fn request(
        &self,
        to: SocketAddr,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        if self.inner.faults.blocks(to) {
            return Err(TransportError::Blocked { peer: to });
        }
        let exchange = async {
            let conn = self.connection(to).await?;
            let stream_error = |reason: String| TransportError::Stream { peer: to, reason };
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|source| TransportError::Connection { peer: to, source })?;
            send.write_all(&request)
                .await
                .map_err(|err| stream_error(err.to_string()))?;
            send.finish().map_err(|err| stream_error(err.to_string()))?;
            let response = recv
                .read_to_end(MAX_MESSAGE_BYTES)
                .await
                .map_err(|err| stream_error(err.to_string()))?;
            Ok(Bytes::from(response))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::TimedOut { peer: to, timeout }),
        }
    }

    /// Closes and forgets the cached connection to `peer` (its process is known gone).
    pub fn drop_connection(&self, peer: SocketAddr) {
        if let Some(PeerSlot::Connected(conn)) = self.lock_peers().remove(&peer) {
            conn.close(0u32.into(), b"peer process gone");
        }
    }

    /// Closes every connection; peers see this node leave at once instead of timing out.
    pub fn close(&self) {
        self.inner
            .endpoint
            .close(0u32.into(), b"node shutting down");
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, PeerSlot>> {
        // A panic while holding this lock leaves a map that is still consistent.
        self.inner
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self, to: SocketAddr) -> Option<quinn::Connection> {
        match self.lock_peers().get(&to) {
            Some(PeerSlot::Connected(conn)) if conn.close_reason().is_none() => Some(conn.clone()),
            _ => None,
        }
    }

    async fn connection(&self, to: SocketAddr) -> Result<quinn::Connection, TransportError> {
        if let Some(conn) = self.cached(to) {
            return Ok(conn);
        }
        let conn = self.dial(to).await?;
        self.install(to, &conn);
        Ok(conn)
    }

    /// Caches a fresh connection and sends the datagrams that waited for it.
    fn install(&self, to: SocketAddr, conn: &quinn::Connection) {
        let queued = match self
            .lock_peers()
            .insert(to, PeerSlot::Connected(conn.clone()))
        {
            Some(PeerSlot::Dialling(queue)) => queue,
            _ => Vec::new(),
        };
        for payload in queued {
            if let Err(err) = conn.send_datagram(payload) {
                tracing::debug!(peer = %to, error = %err, "queued gossip not sent");
            }
        }
    }

    async fn dial_for_datagrams(&self, to: SocketAddr) {
        match self.dial(to).await {
            Ok(conn) => self.install(to, &conn),
            Err(err) => {
                tracing::debug!(peer = %to, error = %err, "dial failed; gossip to it dropped");
                let mut peers = self.lock_peers();
                if matches!(peers.get(&to), Some(PeerSlot::Dialling(_))) {
                    peers.remove(&to);
                }
            }
        }
    }

    async fn dial(&self, to: SocketAddr) -> Result<quinn::Connection, TransportError> {
        let connecting = self
            .inner
            .endpoint
            .connect(to, certs::TRANSPORT_SERVER_NAME)
            .map_err(|err| TransportError::Connect {
                peer: to,
                reason: err.to_string(),
            })?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(TransportError::Connection { peer: to, source }),
            Err(_) => {
                return Err(TransportError::TimedOut {
                    peer: to,
                    timeout: CONNECT_TIMEOUT,
                });
            }
        };
        self.serve(conn.clone());
        Ok(conn)
    }

    async fn accept_loop(self) {
        while let Some(incoming) = self.inner.endpoint.accept().await {
            let transport = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => {
                        transport
                            .lock_peers()
                            .insert(remote, PeerSlot::Connected(conn.clone()));
                        transport.serve(conn);
                    }
                    // Includes peers whose certificate the cluster CA did not sign.
                    Err(err) => {
                        tracing::warn!(peer = %remote, error = %err, "refused a transport connection")
                    }
                }
            });
        }
    }

    /// Reads datagrams and answers streams on a connection, whichever side dialled it.
    fn serve(&self, conn: quinn::Connection) {
        let transport = self.clone();
        let datagram_conn = conn.clone();
        tokio::spawn(async move {
            let from = datagram_conn.remote_address();
            while let Ok(payload) = datagram_conn.read_datagram().await {
                if transport.inner.faults.blocks(from) {
                    continue;
                }
                if transport
                    .inner
                    .datagrams
                    .try_send(Datagram { from, payload })
                    .is_err()
                {
                    tracing::debug!(peer = %from, "gossip input queue full; datagram dropped");
                }
            }
        });
        let transport = self.clone();
        tokio::spawn(async move {
            let from = conn.remote_address();
            while let Ok((send, recv)) = conn.accept_bi().await {
                let transport = transport.clone();
                tokio::spawn(async move { transport.answer(from, send, recv).await });
            }
        });
    }

    async fn answer(
        &self,
        from: SocketAddr,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        if self.inner.faults.blocks(from) {
            let _ = send.reset(0u32.into());
            return;
        }
        let request = match recv.read_to_end(MAX_MESSAGE_BYTES).await {
            Ok(bytes) => Bytes::from(bytes),
            Err(err) => {
                tracing::debug!(peer = %from, error = %err, "unreadable RPC request");
                return;
            }
        };
        let Some(handler) = self.inner.rpc_handler.get() else {
            let _ = send.reset(0u32.into());
            return;
        };
        let response = handler.handle(from, request).await;
        if self.inner.faults.blocks(from) {
            let _ = send.reset(0u32.into());
            return;
        }
        if send.write_all(&response).await.is_ok() {
            let _ = send.finish();
        }
    }
}

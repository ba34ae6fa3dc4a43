//! The HTTP listener: caps concurrent connections (`UPDRAFT_MAX_CONNECTIONS`); connections
//! beyond the cap wait in the kernel's accept queue instead of exhausting memory or files.
//! One address may hold at most `UPDRAFT_MAX_CONNECTIONS_PER_IP` of them (trusted proxies
//! excepted, which speak for many clients): a connection beyond that is closed at once, so
//! that one client cannot take every slot.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
}

/// Open connections by peer address, and the most one address may hold.
struct PerAddress {
    limit: usize,
    exempt: Vec<ipnet::IpNet>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// Counts a new connection of `ip`; false when it already holds the most it may.
    fn admit(&self, ip: IpAddr) -> bool {
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        let mut open = self.open.lock().expect("per-address lock");
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return false;
        }
        *count += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.open.lock().expect("per-address lock");
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

impl LimitedListener {
    /// `per_address`: the most connections one address may hold; `exempt`: addresses without
    /// that limit (trusted proxies).
    pub fn new(inner: TcpListener, max_connections: usize, per_address: usize, exempt: Vec<ipnet::IpNet>) -> Self {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            per_address: Arc::new(PerAddress { limit: per_address.max(1), exempt, open: Mutex::default() }),
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if !self.per_address.admit(addr.ip()) {
                        metrics::counter!("updraft_http_connections_refused_total", "reason" => "per_address").increment(1);
                        tracing::debug!(%addr, "connection refused: this address holds the most connections one may");
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    metrics::gauge!("updraft_http_connections").increment(1.0);
                    let stream =
                        LimitedStream { stream, _permit: permit, ip: addr.ip(), per_address: self.per_address.clone(), client_cert: None };
                    return (stream, addr);
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding one slot of the limits until it closes.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    per_address: Arc<PerAddress>,
    /// The verified client certificate of a TLS connection (set after its handshake).
    client_cert: Option<crate::tls::ClientCert>,
}

/// What a connection tells its requests besides the peer address.
pub trait Connection {
    fn client_cert(&self) -> Option<crate::tls::ClientCert>;
}

impl Connection for LimitedStream {
    fn client_cert(&self) -> Option<crate::tls::ClientCert> {
        self.client_cert.clone()
    }
}

impl Connection for tokio_rustls::server::TlsStream<LimitedStream> {
    fn client_cert(&self) -> Option<crate::tls::ClientCert> {
        self.get_ref().0.client_cert.clone()
    }
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        metrics::gauge!("updraft_http_connections").decrement(1.0);
        self.per_address.release(self.ip);
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The peer address of a connection, for `ConnectInfo<ClientAddr>` in handlers.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// HTTPS: accepts TCP connections under the same limit and completes TLS handshakes in
/// background tasks, so a slow or silent client cannot hold up other connections.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<LimitedStream>, SocketAddr)>,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    /// Serves `certificates` (the current ones at each handshake); with client certificates
    /// configured, a verified one is kept with the connection for its requests.
    pub fn new(mut plain: LimitedListener, certificates: Arc<crate::tls::Certificates>) -> io::Result<Self> {
        use axum::serve::Listener;
        let local_addr = plain.local_addr()?;
        let identity = certificates.client_identity();
        let asks_for_client_certs = certificates.asks_for_client_certs();
        let acceptor = tokio_rustls::TlsAcceptor::from(certificates.server_config(&[b"http/1.1"]));
        let (sender, ready) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = plain.accept().await;
                let acceptor = acceptor.clone();
                let handshake_sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(mut tls)) => {
                            if asks_for_client_certs {
                                let (stream, session) = tls.get_mut();
                                stream.client_cert = crate::tls::ClientCert::of(session.peer_certificates(), identity);
                            }
                            let _ = handshake_sender.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
                if sender.is_closed() {
                    break;
                }
            }
        });
        Ok(TlsListener { local_addr, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<LimitedStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task only ends when this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

const HTTP1_MAX_BUFFER: usize = 8 * 1024;

/// Seconds a client gets to send a request's headers (slow-loris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `stop` turns true; then stops accepting, lets open
/// connections finish their requests for up to `grace`, and aborts whatever is left, so that
/// nothing keeps running once this returns. (`axum::serve` cannot abort its connections.)
pub async fn serve<L>(mut listener: L, router: axum::Router, mut stop: tokio::sync::watch::Receiver<bool>, grace: Duration)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Connection,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A small write queue: hyper keeps polling a response body until this much is queued, even
    // when the client does not read. With many slow clients that queue, not the socket, is
    // what holds memory. It also caps request heads at 8 KiB (as nginx does by default).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true).max_buf_size(HTTP1_MAX_BUFFER);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let router = router.clone();
        let client_cert = io.client_cert();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(ClientAddr(addr)));
            if let Some(client_cert) = &client_cert {
                request.extensions_mut().insert(client_cert.clone());
            }
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            let _ = connection.await;
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(open = connections.len(), "shutdown deadline reached; closing the remaining connections");
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

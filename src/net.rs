//! The HTTP listener: caps concurrent connections (`UPDRAFT_MAX_CONNECTIONS`) instead of
//! exhausting memory or files. When every slot is taken, the connection idle the longest (no
//! request in progress: one that never sent a request, or a keep-alive connection between two)
//! is closed to make room for a new one; when none is idle, new connections wait in the
//! kernel's accept queue. One address may hold at most `UPDRAFT_MAX_CONNECTIONS_PER_IP` of
//! them (trusted proxies excepted, which speak for many clients): a connection beyond that is
//! closed at once, so that one client cannot take every slot. A connection must send a whole
//! request head within `UPDRAFT_HEADER_READ_TIMEOUT_SECS` of opening, and between two requests.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Slots>,
    per_address: Arc<PerAddress>,
}

/// The connection slots (`UPDRAFT_MAX_CONNECTIONS`) and what each open connection is doing.
struct Slots {
    permits: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    epoch: Instant,
}

impl Slots {
    /// Milliseconds since the listener started: the clock of `Activity::last`.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Asks the connection idle the longest to close; false when none is idle.
    fn shed_idlest(&self) -> bool {
        let open = self.open.lock().expect("open connections lock");
        let idlest = open
            .values()
            .filter(|a| a.in_flight.load(Ordering::Acquire) == 0 && !a.shedding.load(Ordering::Acquire))
            .min_by_key(|a| a.last.load(Ordering::Relaxed));
        match idlest {
            Some(activity) => {
                activity.shedding.store(true, Ordering::Release);
                activity.shed.notify_one();
                true
            }
            None => false,
        }
    }
}

/// What one open connection is doing, for shedding the idlest when every slot is taken.
pub struct Activity {
    /// Requests whose head was read and whose response is not yet sent in full.
    in_flight: AtomicUsize,
    /// Whether it ever sent a whole request head.
    served: AtomicBool,
    /// When it opened, or last began or finished a request (`Slots::now`).
    last: AtomicU64,
    /// Set when it was asked to close (`shed`).
    shedding: AtomicBool,
    shed: tokio::sync::Notify,
    slots: Arc<Slots>,
}

impl Activity {
    /// Counts a request from its head until its response is sent (or dropped) with the guard.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        self.last.store(self.slots.now(), Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Waits until the listener asks this connection to make room, and it has no request in
    /// progress (a request that began meanwhile keeps it).
    async fn shed(&self) {
        loop {
            self.shed.notified().await;
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            self.shedding.store(false, Ordering::Release);
        }
    }
}

/// One request in progress on a connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last.store(self.0.slots.now(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's `InFlight` until it is sent in full.
struct Tracked {
    body: axum::body::Body,
    _request: InFlight,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
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
            slots: Arc::new(Slots {
                permits: Arc::new(Semaphore::new(max_connections)),
                open: Mutex::default(),
                next_id: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
            per_address: Arc::new(PerAddress { limit: per_address.max(1), exempt, open: Mutex::default() }),
        }
    }

    /// A free slot; when there is none, one made by closing the connection idle the longest.
    /// Waits while every connection has a request in progress.
    async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(permit) = self.slots.permits.clone().try_acquire_owned() {
                return permit;
            }
            if self.slots.shed_idlest() {
                metrics::counter!("updraft_http_connections_closed_total", "reason" => "shed").increment(1);
            }
            // The shed connection frees its slot as soon as its task sees the request; a
            // connection whose request ends becomes idle, so look again now and then.
            let permits = self.slots.permits.clone();
            if let Ok(permit) = tokio::time::timeout(Duration::from_millis(100), permits.acquire_owned()).await {
                return permit.expect("the semaphore is never closed");
            }
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if !self.per_address.admit(addr.ip()) {
                        metrics::counter!("updraft_http_connections_refused_total", "reason" => "per_address").increment(1);
                        tracing::debug!(%addr, "connection refused: this address holds the most connections one may");
                        drop(stream);
                        continue;
                    }
                    let permit = self.slot().await;
                    let _ = stream.set_nodelay(true);
                    metrics::gauge!("updraft_http_connections").increment(1.0);
                    let activity = Arc::new(Activity {
                        in_flight: AtomicUsize::new(0),
                        served: AtomicBool::new(false),
                        last: AtomicU64::new(self.slots.now()),
                        shedding: AtomicBool::new(false),
                        shed: tokio::sync::Notify::new(),
                        slots: self.slots.clone(),
                    });
                    let id = self.slots.next_id.fetch_add(1, Ordering::Relaxed);
                    self.slots.open.lock().expect("open connections lock").insert(id, activity.clone());
                    let stream = LimitedStream {
                        stream,
                        _permit: permit,
                        ip: addr.ip(),
                        per_address: self.per_address.clone(),
                        id,
                        activity,
                        client_cert: None,
                    };
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
    /// Its entry in `Slots::open`.
    id: u64,
    activity: Arc<Activity>,
    /// The verified client certificate of a TLS connection (set after its handshake).
    client_cert: Option<crate::tls::ClientCert>,
}

/// What a connection tells its requests besides the peer address.
pub trait Connection {
    fn client_cert(&self) -> Option<crate::tls::ClientCert>;
    fn activity(&self) -> Arc<Activity>;
}

impl Connection for LimitedStream {
    fn client_cert(&self) -> Option<crate::tls::ClientCert> {
        self.client_cert.clone()
    }

    fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }
}

impl Connection for tokio_rustls::server::TlsStream<LimitedStream> {
    fn client_cert(&self) -> Option<crate::tls::ClientCert> {
        self.get_ref().0.client_cert.clone()
    }

    fn activity(&self) -> Arc<Activity> {
        self.get_ref().0.activity.clone()
    }
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        metrics::gauge!("updraft_http_connections").decrement(1.0);
        self.per_address.release(self.ip);
        self.activity.slots.open.lock().expect("open connections lock").remove(&self.id);
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
                    let activity = stream.activity.clone();
                    let handshake = tokio::select! {
                        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => handshake,
                        _ = activity.shed() => {
                            tracing::debug!(%addr, "TLS handshake cut off to make room for another connection");
                            return;
                        }
                    };
                    match handshake {
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

/// Serves `router` on `listener` until `stop` turns true; then stops accepting, lets open
/// connections finish their requests for up to `grace`, and aborts whatever is left, so that
/// nothing keeps running once this returns. (`axum::serve` cannot abort its connections.)
///
/// `header_timeout` (`UPDRAFT_HEADER_READ_TIMEOUT_SECS`): how long a connection may take to
/// send a request head, from the moment it opens and between two requests; then it is closed.
pub async fn serve<L>(
    mut listener: L,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
    header_timeout: Duration,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Connection,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A small write queue: hyper keeps polling a response body until this much is queued, even
    // when the client does not read. With many slow clients that queue, not the socket, is
    // what holds memory. It also caps request heads at 8 KiB (as nginx does by default).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true).max_buf_size(HTTP1_MAX_BUFFER);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let router = router.clone();
        let client_cert = io.client_cert();
        let activity = io.activity();
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(ClientAddr(addr)));
            if let Some(client_cert) = &client_cert {
                request.extensions_mut().insert(client_cert.clone());
            }
            let in_flight = requests.begin();
            let response = router.clone().oneshot(request.map(axum::body::Body::new));
            async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| axum::body::Body::new(Tracked { body, _request: in_flight })))
            }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            // hyper's header timeout only starts once it knows the protocol, which takes the
            // first bytes: a connection that sends nothing would otherwise stay open for ever.
            let mut connection = std::pin::pin!(connection);
            let first_head = tokio::time::sleep(header_timeout);
            let mut first_head = std::pin::pin!(first_head);
            let mut waiting_for_first_head = true;
            loop {
                tokio::select! {
                    _ = &mut connection => break,
                    _ = activity.shed() => {
                        tracing::debug!(%addr, "idle connection closed to make room for another");
                        break;
                    }
                    _ = &mut first_head, if waiting_for_first_head => {
                        waiting_for_first_head = false;
                        if !activity.served.load(Ordering::Acquire) {
                            metrics::counter!("updraft_http_connections_closed_total", "reason" => "no_request").increment(1);
                            tracing::debug!(%addr, "connection closed: no request head within the header read timeout");
                            break;
                        }
                    }
                }
            }
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

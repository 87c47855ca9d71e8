//! Connections: accepting them within `--max-connections`, serving HTTP/1.1
//! on each with the header deadline and size limit, closing idle kept-alive
//! ones, and, on shutdown, letting each finish its current response.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::HostMetrics;
use crate::responses::Response;
use crate::server::settings::Settings;

/// What answers the requests of a connection.
pub trait Respond: Send + Sync + 'static {
    /// The response to `req`, which arrived on the connection `conn`.
    fn respond(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
        conn: Arc<ConnState>,
    ) -> impl Future<Output = Response> + Send;
}

/// Serves `responder` on `listener` until `shutdown` turns true, then
/// closes the listener and asks every connection to close after its
/// response.
pub async fn serve<R: Respond>(
    responder: Arc<R>,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    settings: &Settings,
    metrics: Arc<HostMetrics>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stopping(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => break,
        };
        let (responder, shutdown, settings, metrics) =
            (responder.clone(), shutdown.clone(), settings.clone(), metrics.clone());
        tokio::spawn(async move {
            connection(responder, stream, peer, shutdown, &settings, &metrics).await;
            drop(permit);
        });
    }
    tracing::info!("listener closed");
}

async fn connection<R: Respond>(
    responder: Arc<R>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    settings: &Settings,
    metrics: &HostMetrics,
) {
    // Streamed tokens go out as they come, not after the peer's delayed ACK.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    let local = stream.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let state = Arc::new(ConnState::new(local, peer));
    let io = TokioIo::new(Tracked { inner: stream, state: state.clone() });
    let conn_state = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let (responder, conn_state) = (responder.clone(), conn_state.clone());
        async move { Ok::<_, std::convert::Infallible>(responder.respond(req, conn_state).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        // Every head under the byte limit fits, however many fields it has:
        // the shortest field line (`a:` and CRLF) is four bytes.
        .max_headers((settings.max_header_bytes / 4).max(100))
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    state.touch();
    let period = (settings.keep_alive / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = shutdown.wait_for(|&s| s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick(), if !closing => {
                if state.in_flight.load(Ordering::Acquire) == 0 && state.idle_for() >= settings.keep_alive {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&s| s).await;
}

/// What a connection's requests and keep-alive watchdog look at.
pub struct ConnState {
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The address the client connected from.
    pub peer: SocketAddr,
    /// Requests of this connection being answered.
    pub in_flight: AtomicU32,
    /// Milliseconds since the process started, at the last read or write.
    last_active_ms: AtomicU64,
}

impl ConnState {
    pub fn new(local: SocketAddr, peer: SocketAddr) -> Self {
        Self { local, peer, in_flight: AtomicU32::new(0), last_active_ms: AtomicU64::new(0) }
    }

    pub fn touch(&self) {
        self.last_active_ms.store(crate::metrics::uptime().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = crate::metrics::uptime().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_active_ms.load(Ordering::Relaxed)))
    }
}

/// A socket that records when it last moved bytes.
struct Tracked {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if r.is_ready() {
            this.state.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.state.touch();
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.state.touch();
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Binds `addr`, with a clear message when the port is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            bail!("{addr} is already in use; pick another with --addr")
        }
        Err(e) => Err(e).with_context(|| format!("binding {addr}")),
    }
}

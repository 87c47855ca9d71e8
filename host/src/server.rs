//! `tern serve`: hyper accepts HTTP/1.1 connections and every request runs in
//! an instance of the active handler component.
//!
//! 1. The host answers a few routes itself, whatever handler is loaded:
//!    `/ready`, `/metrics/host` and `/admin/component` (see `admin`). Every
//!    other request needs an API key when keys are configured, and then runs
//!    in the handler.
//! 2. Each request gets its own `Store` (pooling allocator, memory limit,
//!    wall-clock deadline) and a fresh instance, or, with
//!    `--reuse-instances`, an instance that already answered others. The
//!    guest parks on pollables while the engine's threads compute, and
//!    yields to tokio at every epoch tick, so a guest stuck in a loop neither
//!    holds a worker thread nor outlives its deadline.
//! 3. Connections are bounded (`--max-connections`), must send their
//!    headers within `--header-timeout` and in at most `--max-header-bytes`
//!    (431), and are closed after `--keep-alive` idle seconds.
//! 4. On shutdown the listener closes, connections finish their current
//!    response and close, and [`Server::drain`] waits for requests in flight.

use crate::auth::{self, Keys};
use crate::components::{Components, Loaded, Reusable};
use crate::metrics::HostMetrics;
use crate::state::HostState;
use crate::store::KvStore;
use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tern_engine::Engine;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;
use wasmtime::component::ResourceTable;
use wasmtime::{
    Config, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

/// How often the epoch advances; deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

pub type Response = hyper::Response<HyperOutgoingBody>;

/// Limits and settings of the HTTP side.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Linear memory one request's instance may grow to.
    pub memory_bytes: usize,
    /// Wall time one request may keep its instance.
    pub request_timeout: Duration,
    /// Instances alive at once (pooling allocator slots).
    pub max_instances: u32,
    /// Requests one instance answers before it is dropped (1: a fresh
    /// instance per request).
    pub reuse_instances: u32,
    /// Settings the handler reads from its environment, e.g.
    /// `TERN_MAX_BATCH` (most prompts one `POST /batch` may carry).
    pub guest_env: Vec<(String, String)>,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Idle time after which a kept-alive connection is closed.
    pub keep_alive: Duration,
    /// Largest request head (431 beyond).
    pub max_header_bytes: usize,
    /// Largest declared request body (413 beyond).
    pub max_body_bytes: u64,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Largest component `POST /admin/component` accepts.
    pub max_component_bytes: usize,
    /// Gzip whole textual responses for clients that accept it.
    pub compress: bool,
}

/// A wasmtime engine configured for serving: async, epochs, pooling.
pub fn wasm_engine(settings: &Settings) -> anyhow::Result<wasmtime::Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(settings.max_instances);
    pool.total_core_instances(settings.max_instances * 4);
    pool.total_memories(settings.max_instances * 2);
    pool.total_tables(settings.max_instances * 4);
    pool.max_memory_size(settings.memory_bytes);
    // Pooled fiber stacks are reset after each request: the first 128 KiB by
    // memset, the rest handed back to the kernel, so a guest that recursed
    // deep leaves neither its data nor resident pages behind.
    config.async_stack_zeroing(true);
    pool.async_stack_keep_resident(128 << 10);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(wasmtime::Engine::new(&config)?)
}

/// The running server: the active handler, the engine behind it, and the
/// host's own policy (keys, limits, metrics, draining).
pub struct Server {
    pub components: Arc<Components>,
    pub engine: Engine,
    kv: Arc<KvStore>,
    pub settings: Settings,
    keys: Keys,
    pub admin_keys: Keys,
    pub metrics: Arc<HostMetrics>,
    draining: AtomicBool,
    idle: tokio::sync::Notify,
    request_ids: AtomicU64,
}

impl Server {
    pub fn new(
        components: Arc<Components>,
        engine: Engine,
        kv: Arc<KvStore>,
        settings: Settings,
        keys: Keys,
        admin_keys: Keys,
        metrics: Arc<HostMetrics>,
    ) -> Self {
        Self {
            components,
            engine,
            kv,
            settings,
            keys,
            admin_keys,
            metrics,
            draining: AtomicBool::new(false),
            idle: tokio::sync::Notify::new(),
            request_ids: AtomicU64::new(0),
        }
    }

    /// Stops reporting ready and waits up to `grace` for the requests in
    /// flight; true if they all finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.draining.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.idle.notified();
            if self.metrics.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.metrics.in_flight.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// Waits up to `limit` for every connection to close (each writes out
    /// what its last response still holds first).
    pub async fn connections_closed(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.metrics.connections.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    fn new_store(&self) -> Store<HostState> {
        let state = HostState {
            wasi: WasiCtx::builder().inherit_stderr().envs(&self.settings.guest_env).build(),
            http: WasiHttpCtx::new(),
            hooks: crate::state::NoOutgoingRequests,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(self.settings.memory_bytes).instances(8).build(),
            engine: self.engine.clone(),
            store: self.kv.clone(),
            deadline: Instant::now() + self.settings.request_timeout,
            timed_out: false,
            tokens: 0,
        };
        let mut store = Store::new(self.components.engine(), state);
        store.limiter(|s| &mut s.limits);
        // Every tick the guest is running, it yields to tokio (so a busy
        // guest never holds a worker thread) until its deadline passes.
        store.epoch_deadline_callback(|mut ctx| {
            if Instant::now() >= ctx.data().deadline {
                ctx.data_mut().timed_out = true;
                return Err(wasmtime::format_err!("the request handler ran past its deadline"));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        store
    }

    /// An idle instance of `loaded` to reuse (with the requests it has
    /// answered), or a new store to instantiate in.
    fn store_for(&self, loaded: &Loaded) -> (Store<HostState>, Option<(crate::bindings::Handler, u32)>) {
        if self.settings.reuse_instances > 1 {
            if let Some(r) = loaded.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                let Reusable { mut store, handler, uses } = r;
                store.data_mut().deadline = Instant::now() + self.settings.request_timeout;
                store.data_mut().tokens = 0;
                store.set_epoch_deadline(1);
                self.metrics.reused();
                return (store, Some((handler, uses)));
            }
        }
        (self.new_store(), None)
    }

    /// Runs one request through the active handler.
    async fn run_guest(
        self: &Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
        track: Arc<Track>,
    ) -> anyhow::Result<Response> {
        let loaded = self.components.active();
        let (mut store, reused) = self.store_for(&loaded);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let this = self.clone();
        let version = loaded.version().to_string();
        let id = track.id.clone();
        let span = tracing::info_span!("request", id = %id);
        // The guest keeps running after the head is sent, to stream the body.
        let task = tokio::task::spawn(
            async move {
                let (handler, uses) = match reused {
                    Some(reused) => reused,
                    None => {
                        let started = Instant::now();
                        let handler = loaded.pre.instantiate_async(&mut store).await?;
                        this.metrics.instantiated(started.elapsed());
                        (handler, 0)
                    }
                };
                // Epochs cannot interrupt a guest parked in a host call: the
                // host's own deadline covers that.
                let limit = this.settings.request_timeout + EPOCH_TICK * 2;
                let call = handler.wasi_http_incoming_handler().call_handle(&mut store, req, out);
                let result = match tokio::time::timeout(limit, call).await {
                    Ok(r) => r.map_err(anyhow::Error::from),
                    Err(_) => {
                        store.data_mut().timed_out = true;
                        Err(anyhow::anyhow!("the request handler ran past its deadline"))
                    }
                };
                track.tokens.store(store.data().tokens, Ordering::Relaxed);
                match result {
                    Ok(()) if uses + 1 < this.settings.reuse_instances => {
                        let mut idle = loaded.idle.lock().unwrap_or_else(|p| p.into_inner());
                        idle.push(Reusable { store, handler, uses: uses + 1 });
                        Ok(())
                    }
                    Ok(()) => Ok(()),
                    Err(e) => {
                        this.metrics.trapped();
                        track.timed_out.store(store.data().timed_out, Ordering::Relaxed);
                        tracing::error!(error = format!("{e:#}"), "the request handler failed");
                        Err(e)
                    }
                }
            }
            .instrument(span),
        );
        match receiver.await {
            Ok(Ok(mut resp)) => {
                if let Ok(v) = http::HeaderValue::from_str(&version) {
                    resp.headers_mut().insert("x-tern-component", v);
                }
                Ok(resp)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                // A trap was logged by the task; the other two are logged here.
                let e = match task.await {
                    Ok(Ok(())) => anyhow::anyhow!("the handler returned without a response"),
                    Ok(Err(e)) => return Err(e),
                    Err(e) => e.into(),
                };
                tracing::error!(%id, error = format!("{e:#}"), "the handler failed before responding");
                Err(e)
            }
        }
    }

    /// Answers one request: the host's own routes, the key check, then the
    /// handler.
    async fn respond(self: Arc<Self>, req: hyper::Request<hyper::body::Incoming>, conn: Arc<ConnState>) -> Response {
        let track = Arc::new(Track::new(&self, &req, conn));
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let gzip_ok = self.settings.compress && crate::compress::accepts_gzip(req.headers());
        let mut resp = match (method.as_str(), path.as_str()) {
            (_, "/ready") => self.ready(),
            (_, "/admin/component") => crate::admin::component(&self, req).await,
            _ if !auth::is_open(&method, &path) && !self.keys.is_empty() && !self.keys.allows(req.headers()) => {
                unauthorized()
            }
            ("GET", "/metrics/host") => {
                text_response(200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render())
            }
            _ if declared_length(&req).is_some_and(|n| n > self.settings.max_body_bytes) => error_response(
                413,
                "invalid_request_error",
                "request_too_large",
                &format!("The request body is larger than the limit of {} bytes.", self.settings.max_body_bytes),
            ),
            _ => match self.run_guest(req, track.clone()).await {
                Ok(r) => r,
                // The task has logged the reason.
                Err(_) if track.timed_out.load(Ordering::Relaxed) => error_response(
                    504,
                    "server_error",
                    "handler_timeout",
                    "The request handler did not answer within its deadline.",
                ),
                Err(_) => error_response(500, "server_error", "handler_failed", "The request handler failed."),
            },
        };
        if gzip_ok && crate::compress::worth_it(&resp) {
            resp = crate::compress::gzip(resp).await;
        }
        track.status.store(resp.status().as_u16(), Ordering::Relaxed);
        if let Ok(v) = http::HeaderValue::from_str(&track.id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
    }

    /// `/ready`: 200 once the model is loaded, 503 while loading or draining.
    fn ready(&self) -> Response {
        let status = if self.draining.load(Ordering::Acquire) {
            "draining"
        } else if self.engine.status().ready {
            "ready"
        } else {
            "loading"
        };
        let code = if status == "ready" { 200 } else { 503 };
        text_response(code, "application/json", serde_json::json!({ "status": status }).to_string())
    }

    /// Serves on `listener` until `shutdown` turns true, then closes the
    /// listener and asks every connection to close after its response.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.settings.max_connections));
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
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                this.connection(stream, peer, shutdown).await;
                drop(permit);
            });
        }
        tracing::info!("listener closed");
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        // Streamed tokens go out as they come, not after the peer's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::default());
        let io = TokioIo::new(Tracked { inner: stream, state: state.clone() });
        let this = self.clone();
        let conn_state = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            let conn_state = conn_state.clone();
            async move { Ok::<_, std::convert::Infallible>(this.respond(req, conn_state).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_timeout)
            .max_buf_size(self.settings.max_header_bytes.max(8192))
            .keep_alive(true);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        state.touch();
        let period = (self.settings.keep_alive / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
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
                    if state.in_flight.load(Ordering::Acquire) == 0 && state.idle_for() >= self.settings.keep_alive {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request id: the client's `X-Request-Id` when it is reasonable,
    /// else a fresh one.
    fn request_id(&self, headers: &http::HeaderMap) -> String {
        if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
            if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
                return id.to_string();
            }
        }
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        format!("{:016x}", splitmix(nanos as u64 ^ n.rotate_left(32) ^ std::process::id() as u64))
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&s| s).await;
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn declared_length(req: &hyper::Request<hyper::body::Incoming>) -> Option<u64> {
    req.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// One request's bookkeeping: counted in flight from arrival until its
/// response (streamed or not) is finished, then logged and counted.
pub struct Track {
    server: Arc<Server>,
    conn: Arc<ConnState>,
    pub id: String,
    method: http::Method,
    path: String,
    started: Instant,
    status: AtomicU16,
    tokens: AtomicU32,
    timed_out: AtomicBool,
}

impl Track {
    fn new(server: &Arc<Server>, req: &hyper::Request<hyper::body::Incoming>, conn: Arc<ConnState>) -> Self {
        server.metrics.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            server: server.clone(),
            conn,
            id: server.request_id(req.headers()),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            started: Instant::now(),
            status: AtomicU16::new(0),
            tokens: AtomicU32::new(0),
            timed_out: AtomicBool::new(false),
        }
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let status = self.status.load(Ordering::Relaxed);
        tracing::info!(id = %self.id, method = %self.method, route = %self.path, status,
            ms = elapsed.as_secs_f64() * 1e3, tokens = self.tokens.load(Ordering::Relaxed), "request");
        self.server.metrics.request(&self.path, status, elapsed);
        self.conn.touch();
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.server.metrics.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.server.idle.notify_waiters();
        }
    }
}

/// What a connection's keep-alive watchdog looks at.
#[derive(Default)]
pub struct ConnState {
    in_flight: AtomicU32,
    /// Milliseconds since the process started, at the last read or write.
    last_active_ms: AtomicU64,
}

impl ConnState {
    fn touch(&self) {
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

/// Advances the epoch forever; a detached thread so it outlives no one.
pub fn start_epoch_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("tern-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(e) => e.increment_epoch(),
                None => return,
            }
        })
        .expect("spawning the epoch thread");
}

/// A whole response with a fixed body.
pub fn text_response(status: u16, content_type: &'static str, body: String) -> Response {
    let body = http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}

/// An error in the OpenAI error schema.
pub fn error_response(status: u16, kind: &str, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    text_response(status, "application/json", body.to_string())
}

/// 401 in the OpenAI error schema, as OpenAI answers a missing or wrong key.
pub fn unauthorized() -> Response {
    let mut resp = error_response(
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect or missing API key. Send it as `Authorization: Bearer KEY`.",
    );
    resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    resp
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

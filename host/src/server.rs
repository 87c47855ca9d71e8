//! `tern serve`: hyper accepts HTTP/1.1 connections and every request runs in
//! a fresh instance of the handler component.
//!
//! 1. The component is compiled once and pre-instantiated against a linker
//!    holding WASI, wasi:http and the host's `tern:llm/inference`.
//! 2. Each request gets its own `Store` (pooling allocator, memory limit,
//!    epoch deadline) and runs on a tokio task; the guest parks on pollables
//!    while the engine's own threads compute, so no tokio worker blocks.
//! 3. A ticker thread advances the engine epoch so that a guest stuck in a
//!    loop traps at its deadline.

use crate::bindings::HandlerPre;
use crate::state::HostState;
use crate::store::KvStore;
use anyhow::{bail, Context as _};
use hyper::server::conn::http1;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tern_engine::Engine;
use tokio::net::TcpListener;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

/// How often the epoch advances; deadlines are whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(100);

/// Limits of the wasm side of a request.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Linear memory one request's instance may grow to.
    pub memory_bytes: usize,
    /// Wall time one request may keep its instance.
    pub request_timeout: Duration,
    /// Instances alive at once (pooling allocator slots).
    pub max_instances: u32,
    /// Settings the handler reads from its environment, e.g.
    /// `TERN_MAX_BATCH` (most prompts one `POST /batch` may carry).
    pub guest_env: Vec<(String, String)>,
}

/// A compiled handler, ready to instantiate per request.
pub struct Handler {
    pre: HandlerPre<HostState>,
    engine: Engine,
    store: Arc<KvStore>,
    limits: ServeLimits,
}

/// A wasmtime engine configured for serving: async, epochs, pooling.
pub fn wasm_engine(limits: &ServeLimits) -> anyhow::Result<wasmtime::Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(limits.max_instances);
    pool.total_core_instances(limits.max_instances * 4);
    pool.total_memories(limits.max_instances * 2);
    pool.total_tables(limits.max_instances * 4);
    pool.max_memory_size(limits.memory_bytes);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(wasmtime::Engine::new(&config)?)
}

impl Handler {
    /// Compiles `wasm` and checks it against everything the host provides.
    pub fn new(
        wasm_engine: &wasmtime::Engine,
        wasm: &[u8],
        engine: Engine,
        store: Arc<KvStore>,
        limits: ServeLimits,
    ) -> anyhow::Result<Self> {
        let component = Component::new(wasm_engine, wasm)
            .map_err(anyhow::Error::from)
            .context("compiling the handler component")?;
        let mut linker = Linker::<HostState>::new(wasm_engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        crate::bindings::inference::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        crate::bindings::store_usage::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        crate::bindings::wasi::keyvalue::store::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        crate::bindings::wasi::keyvalue::atomics::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        let pre = HandlerPre::new(
            linker.instantiate_pre(&component).map_err(anyhow::Error::from).context("linking the handler component")?,
        )?;
        Ok(Self { pre, engine, store, limits })
    }

    fn new_store(&self) -> Store<HostState> {
        let state = HostState {
            wasi: WasiCtx::builder().inherit_stderr().envs(&self.limits.guest_env).build(),
            http: WasiHttpCtx::new(),
            hooks: crate::state::NoOutgoingRequests,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(self.limits.memory_bytes).instances(8).build(),
            engine: self.engine.clone(),
            store: self.store.clone(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        let ticks = (self.limits.request_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store
    }

    /// Runs one request through a fresh instance.
    pub async fn handle(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> anyhow::Result<hyper::Response<HyperOutgoingBody>> {
        let mut store = self.new_store();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.pre.clone();
        // The guest keeps running after the head is sent, to stream the body.
        let task = tokio::task::spawn(async move {
            let handler = pre.instantiate_async(&mut store).await?;
            handler.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
        });
        match receiver.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                let e = match task.await {
                    Ok(Ok(())) => anyhow::anyhow!("the handler returned without a response"),
                    Ok(Err(e)) => e.into(),
                    Err(e) => e.into(),
                };
                Err(e.context("the handler failed before responding"))
            }
        }
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

/// JSON 500 for a request whose handler trapped; the guest never saw it.
fn internal_error() -> hyper::Response<HyperOutgoingBody> {
    use http_body_util::BodyExt;
    let body = r#"{"error":{"message":"the request handler failed","type":"server_error","param":null,"code":null}}"#;
    let body = http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}

/// Serves `handler` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, handler: Arc<Handler>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Streamed tokens go out as they come, not after the peer's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move {
                    let started = std::time::Instant::now();
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    let resp = match handler.handle(req).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = format!("{e:#}"), "handler failed");
                            internal_error()
                        }
                    };
                    tracing::info!(%method, %path, status = resp.status().as_u16(),
                        ms = started.elapsed().as_secs_f64() * 1e3, "request");
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
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

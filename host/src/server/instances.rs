//! Handler instances: the wasmtime engine set up for serving, one `Store`
//! per request (memory limit, wall-clock deadline, a yield at every epoch
//! tick), and a request run through a fresh instance of the active handler
//! or, with `--reuse-instances`, one that already answered others.
//!
//! Every store holds one of `--max-instances` slots from its creation
//! until it is dropped; a request that finds none free is refused at once
//! with [`Busy`] rather than failing to instantiate. [`PROBE_SLOTS`] more
//! are kept for `GET /health`, so a server with every instance taken still
//! says how it is.
//!
//! The guest parks on pollables while the engine's threads compute, and
//! yields to tokio at every epoch tick, so a guest stuck in a loop neither
//! holds a worker thread nor outlives its deadline. Epochs cannot interrupt
//! a guest parked in a host call: a host-side timeout covers that.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_engine::Engine;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use wasmtime::component::ResourceTable;
use wasmtime::{
    Config, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{FsPerms, WasiCtx};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use crate::app::Outgoing;
use crate::bindings::Handler;
use crate::components::{Components, Loaded, Reusable};
use crate::metrics::HostMetrics;
use crate::responses::Response;
use crate::server::settings::Settings;
use crate::server::track::Track;
use crate::state::{HostState, Shared};

/// Instances beyond `--max-instances` kept for health probes.
pub const PROBE_SLOTS: u32 = 4;

/// How often the epoch advances; deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A wasmtime engine configured for serving: async, epochs, pooling.
pub fn wasm_engine(settings: &Settings) -> anyhow::Result<wasmtime::Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    let instances = settings.max_instances + PROBE_SLOTS;
    pool.total_component_instances(instances);
    pool.total_core_instances(instances * 4);
    pool.total_memories(instances * 2);
    pool.total_tables(instances * 4);
    pool.max_memory_size(settings.memory_bytes);
    // Pooled fiber stacks are reset after each request: the first 128 KiB by
    // memset, the rest handed back to the kernel, so a guest that recursed
    // deep leaves neither its data nor resident pages behind.
    config.async_stack_zeroing(true);
    pool.async_stack_keep_resident(128 << 10);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(wasmtime::Engine::new(&config)?)
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

/// Every handler instance was taken when a request came.
#[derive(Debug)]
pub struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("every handler instance is taken")
    }
}

impl std::error::Error for Busy {}

/// What a request's instance is made of and limited by.
pub struct Instances {
    components: Arc<Components>,
    engine: Engine,
    shared: Shared,
    settings: Settings,
    metrics: Arc<HostMetrics>,
    /// One permit per `--max-instances` slot.
    slots: Arc<Semaphore>,
    /// The slots only health probes take.
    probe_slots: Arc<Semaphore>,
}

impl Instances {
    pub fn new(
        components: Arc<Components>,
        engine: Engine,
        shared: Shared,
        settings: Settings,
        metrics: Arc<HostMetrics>,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_instances as usize));
        let probe_slots = Arc::new(Semaphore::new(PROBE_SLOTS as usize));
        Self { components, engine, shared, settings, metrics, slots, probe_slots }
    }

    /// The handler's environment, and `--webui`'s folder read-only.
    fn wasi_ctx(&self) -> WasiCtx {
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stderr().envs(&self.settings.guest_env);
        if let Some(dir) = &self.settings.webui {
            // Checked at start; if it has gone since, the frontend's paths answer 404.
            if let Err(e) = wasi.preopened_dir(dir, super::settings::WEBUI_GUEST_DIR, FsPerms::ReadOnly) {
                tracing::warn!(dir = %dir.display(), error = %e, "the --webui folder cannot be opened");
            }
        }
        wasi.build()
    }

    fn new_store(&self) -> Store<HostState> {
        let state = HostState {
            wasi: self.wasi_ctx(),
            http: WasiHttpCtx::new(),
            hooks: Outgoing { app: self.shared.app.clone() },
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(self.settings.memory_bytes).instances(8).build(),
            engine: self.engine.clone(),
            store: self.shared.kv.clone(),
            jobs: self.shared.jobs.clone(),
            app: self.shared.app.clone(),
            sessions: self.shared.sessions.clone(),
            deadline: Instant::now() + self.settings.request_timeout,
            timed_out: false,
            tokens: 0,
            caller: None,
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
    /// answered), or a new store to instantiate in; [`Busy`] when every
    /// slot is taken (for a health `probe`, the probes' own ones too).
    fn store_for(&self, loaded: &Loaded, probe: bool) -> Result<(Slot, Option<(Handler, u32)>), Busy> {
        if self.settings.reuse_instances > 1 {
            if let Some(r) = loaded.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
                let Reusable { mut store, slot, handler, uses } = r;
                store.data_mut().deadline = Instant::now() + self.settings.request_timeout;
                store.data_mut().tokens = 0;
                store.set_epoch_deadline(1);
                self.metrics.reused();
                return Ok((Slot { store, permit: slot }, Some((handler, uses))));
            }
        }
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if probe => self.probe_slots.clone().try_acquire_owned().map_err(|_| Busy)?,
            Err(_) => return Err(Busy),
        };
        Ok((Slot { store: self.new_store(), permit }, None))
    }

    /// Runs one request through the active handler.
    pub async fn run(
        self: &Arc<Self>,
        req: hyper::Request<http_body_util::Full<Bytes>>,
        track: Arc<Track>,
    ) -> anyhow::Result<Response> {
        let loaded = self.components.active();
        let probe = req.uri().path() == "/health" && matches!(*req.method(), http::Method::GET | http::Method::HEAD);
        let (mut slot, reused) = self.store_for(&loaded, probe)?;
        let store = &mut slot.store;
        store.data_mut().caller =
            req.headers().get(crate::server::IDENTITY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
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
                // Dropped whole, the store before its slot, however this ends.
                let mut slot = slot;
                let store = &mut slot.store;
                let (handler, uses) = match reused {
                    Some(reused) => reused,
                    None => {
                        let started = Instant::now();
                        let handler = loaded.pre.instantiate_async(&mut *store).await?;
                        this.metrics.instantiated(started.elapsed());
                        (handler, 0)
                    }
                };
                // Epochs cannot interrupt a guest parked in a host call: the
                // host's own deadline covers that.
                let limit = this.settings.request_timeout + EPOCH_TICK * 2;
                let call = handler.wasi_http_incoming_handler().call_handle(&mut *store, req, out);
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
                        let Slot { store, permit } = slot;
                        let mut idle = loaded.idle.lock().unwrap_or_else(PoisonError::into_inner);
                        idle.push(Reusable { store, slot: permit, handler, uses: uses + 1 });
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
}

/// A store and its place among `--max-instances`; fields drop in order, so
/// the pooling slot is free before the permit says so.
struct Slot {
    store: Store<HostState>,
    permit: OwnedSemaphorePermit,
}

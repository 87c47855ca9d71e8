//! Per-request store data: WASI and wasi:http contexts, the resource table,
//! memory limits, the request's deadline, and handles to the shared engine,
//! key-value store and app layer.

use std::sync::Arc;
use std::time::Instant;
use tern_engine::Engine;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::app::{App, Outgoing};
use crate::kv::KeyValue;
use crate::shared_jobs::SharedJobs;

/// State every request shares: the key-value store, the job table other
/// replicas see (with Redis), and the app layer.
#[derive(Clone)]
pub struct Shared {
    pub kv: KeyValue,
    pub jobs: Option<Arc<SharedJobs>>,
    pub app: Arc<App>,
    pub sessions: Arc<crate::sessions::Sessions>,
}

pub struct HostState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub hooks: Outgoing,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub engine: Engine,
    /// The `wasi:keyvalue` buckets every request shares.
    pub store: KeyValue,
    /// Jobs as every replica sees them (with `--keyvalue redis://…`).
    pub jobs: Option<Arc<SharedJobs>>,
    /// The app layer's database, settings and upstream.
    pub app: Arc<App>,
    /// Engine.IO sessions (`tern:llm/sessions`).
    pub sessions: Arc<crate::sessions::Sessions>,
    /// When the current request must be done; past it the guest traps at
    /// its next epoch tick.
    pub deadline: Instant,
    /// Set when the guest was stopped for running past `deadline`.
    pub timed_out: bool,
    /// Who the current request's key names (`x-tern-identity`), if anyone:
    /// jobs are answered only to the caller that submitted them.
    pub caller: Option<String>,
    /// Tokens the current request's generations produced (for its log line).
    pub tokens: u32,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

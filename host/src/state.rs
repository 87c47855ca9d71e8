//! Per-request store data: WASI and wasi:http contexts, the resource table,
//! memory limits, the request's deadline, and handles to the shared engine
//! and key-value store.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tern_engine::Engine;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::kv_store::KvStore;

pub struct HostState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub hooks: NoOutgoingRequests,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub engine: Engine,
    /// The `wasi:keyvalue` buckets every request shares.
    pub store: Arc<KvStore>,
    /// When the current request must be done; past it the guest traps at
    /// its next epoch tick.
    pub deadline: Instant,
    /// Set when the guest was stopped for running past `deadline`.
    pub timed_out: bool,
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

type SendFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

/// The handler world imports no outgoing HTTP; should a component reach for
/// it anyway, the request is denied rather than sent.
pub struct NoOutgoingRequests;

impl WasiHttpHooks for NoOutgoingRequests {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: SendFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, SendFuture), HttpError>> + Send> {
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

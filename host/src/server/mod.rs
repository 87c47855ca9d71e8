//! `tern serve`'s HTTP side: hyper accepts HTTP/1.1 connections and every
//! request runs in an instance of the active handler component.
//!
//! 1. The host answers a few routes itself, whatever handler is loaded:
//!    `/ready`, `/metrics/host` and `/admin/component` (see `admin`). Every
//!    other request needs an API key when keys are configured, and then runs
//!    in the handler ([`instances`]).
//! 2. Connections are bounded (`--max-connections`), must send their
//!    headers within `--header-timeout` and in at most `--max-header-bytes`
//!    (431), and are closed after `--keep-alive` idle seconds
//!    ([`connection`]).
//! 3. Every request is counted in flight until its response is finished,
//!    then logged with its id ([`track`]).
//! 4. On shutdown the listener closes, connections finish their current
//!    response and close, and [`Server::drain`] waits for requests in flight.

pub mod connection;
pub mod instances;
pub mod settings;
pub mod track;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_engine::Engine;
use tokio::net::TcpListener;

use crate::auth::{self, Keys};
use crate::components::Components;
use crate::kv_store::KvStore;
use crate::metrics::HostMetrics;
use crate::responses::{error_response, text_response, unauthorized, Response};
use connection::{ConnState, Respond};
use instances::Instances;
pub use settings::Settings;
use track::{RequestIds, Track};

/// The running server: the active handler, the engine behind it, and the
/// host's own policy (keys, limits, metrics, draining).
pub struct Server {
    components: Arc<Components>,
    engine: Engine,
    instances: Arc<Instances>,
    settings: Settings,
    keys: Keys,
    admin_keys: Keys,
    pub metrics: Arc<HostMetrics>,
    draining: AtomicBool,
    /// Told when the last request in flight ends.
    idle: Arc<tokio::sync::Notify>,
    request_ids: RequestIds,
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
        let instances =
            Arc::new(Instances::new(components.clone(), engine.clone(), kv, settings.clone(), metrics.clone()));
        Self {
            components,
            engine,
            instances,
            settings,
            keys,
            admin_keys,
            metrics,
            draining: AtomicBool::new(false),
            idle: Arc::new(tokio::sync::Notify::new()),
            request_ids: RequestIds::default(),
        }
    }

    /// Serves on `listener` until `shutdown` turns true.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: tokio::sync::watch::Receiver<bool>) {
        let (settings, metrics) = (self.settings.clone(), self.metrics.clone());
        connection::serve(self, listener, shutdown, &settings, metrics).await
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
}

impl Respond for Server {
    /// Answers one request: the host's own routes, the key check, then the
    /// handler.
    async fn respond(self: Arc<Self>, req: hyper::Request<hyper::body::Incoming>, conn: Arc<ConnState>) -> Response {
        let id = self.request_ids.for_request(req.headers());
        let track = Arc::new(Track::new(self.metrics.clone(), self.idle.clone(), id, &req, conn));
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let gzip_ok = self.settings.compress && crate::compress::accepts_gzip(req.headers());
        let mut resp = match (method.as_str(), path.as_str()) {
            (_, "/ready") => self.ready(),
            (_, "/admin/component") => {
                let limit = self.settings.max_component_bytes;
                crate::admin::component(&self.components, &self.admin_keys, limit, req).await
            }
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
            _ => match self.instances.run(req, track.clone()).await {
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
}

fn declared_length(req: &hyper::Request<hyper::body::Incoming>) -> Option<u64> {
    req.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

//! `tern serve`'s HTTP side: hyper accepts HTTP/1.1 connections and every
//! request runs in an instance of the active handler component.
//!
//! 1. The host answers a few routes itself, whatever handler is loaded:
//!    `/ready`, `/metrics/host` and `/admin/component` (see `admin`). Every
//!    other request needs an API key when keys are configured, and then runs
//!    in the handler ([`instances`]).
//!    The handler learns the caller from the host: `x-tern-identity` names
//!    the key that matched and `x-tern-role: admin` marks an admin key (or
//!    a server without keys); both are removed from what clients send.
//! 2. Connections are bounded (`--max-connections`), must send their
//!    headers within `--header-timeout` and in at most `--max-header-bytes`
//!    (431), and are closed after `--keep-alive` idle seconds
//!    ([`connection`]). An HTTP/1.1 request without `Host` is 400; an
//!    HTTP/1.0 one is served for the address it came to.
//! 3. A body is read whole, within `--body-timeout` and the size limit,
//!    before a handler instance is taken ([`body`]); with every instance
//!    taken, a request is 503 with `Retry-After`, logged and counted.
//! 4. Every request is counted in flight until its response is finished,
//!    then logged with its id ([`track`]).
//! 5. On shutdown the listener closes, connections finish their current
//!    response and close, and [`Server::drain`] waits for requests in flight.

pub mod body;
pub mod connection;
pub mod instances;
pub mod settings;
pub mod track;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_engine::Engine;
use tokio::net::TcpListener;

use crate::admin::AdminPolicy;
use crate::auth::{self, Keys};
use crate::components::Components;
use crate::metrics::HostMetrics;
use crate::responses::{error_response, text_response, unauthorized, Response};
use crate::state::Shared;
use connection::{ConnState, Respond};
use instances::{Busy, Instances};
pub use settings::Settings;
use track::{RequestIds, Track};

/// The running server: the active handler, the engine behind it, and the
/// host's own policy (keys, limits, metrics, draining).
pub struct Server {
    components: Arc<Components>,
    engine: Engine,
    shared: Shared,
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
        shared: Shared,
        settings: Settings,
        keys: Keys,
        admin_keys: Keys,
        metrics: Arc<HostMetrics>,
    ) -> Self {
        let instances = Arc::new(Instances::new(
            components.clone(),
            engine.clone(),
            shared.clone(),
            settings.clone(),
            metrics.clone(),
        ));
        Self {
            components,
            engine,
            shared,
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

    /// `/ready`: 200 once the model is loaded and the configured database
    /// and Redis have answered; 503 before that and while draining.
    fn ready(&self) -> Response {
        let status = if self.draining.load(Ordering::Acquire) {
            "draining"
        } else if self.shared.app.database().is_none() {
            "waiting for the database"
        } else if !self.shared.kv.ready() {
            "waiting for redis"
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
    /// Answers one request: the host's own routes, the key check, the body,
    /// then the handler.
    async fn respond(self: Arc<Self>, req: hyper::Request<hyper::body::Incoming>, conn: Arc<ConnState>) -> Response {
        let id = self.request_ids.for_request(req.headers());
        let track = Arc::new(Track::new(self.metrics.clone(), self.idle.clone(), id, &req, conn.clone()));
        let gzip_ok = self.settings.compress && crate::compress::accepts_gzip(req.headers());
        let mut resp = self.answer(req, &conn, &track).await;
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

impl Server {
    async fn answer(
        &self,
        mut req: hyper::Request<hyper::body::Incoming>,
        conn: &ConnState,
        track: &Arc<Track>,
    ) -> Response {
        if let Err(why) = settle_host(&mut req, conn) {
            return error_response(400, "invalid_request_error", "bad_host", why);
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/ready" => return self.ready(),
            "/admin/component" => {
                let policy = AdminPolicy {
                    admin_keys: &self.admin_keys,
                    api_keys: &self.keys,
                    max_bytes: self.settings.max_component_bytes,
                    body_timeout: self.settings.body_timeout,
                    component_file: self.settings.component_file.as_deref(),
                };
                return crate::admin::component(&self.components, &policy, req).await;
            }
            _ => {}
        }
        let user = self.keys.identify(req.headers());
        let admin = self.admin_keys.identify(req.headers());
        let gated = !auth::is_open(&method, &path) && !auth::is_account_route(&path);
        if gated && !self.keys.is_empty() && user.is_none() && admin.is_none() {
            return unauthorized();
        }
        if method == http::Method::GET && path == "/metrics/host" {
            let redis = self.shared.kv.redis().map(|r| {
                let help = "Redis commands that failed, timed out or were skipped while it was down.";
                ("tern_keyvalue_errors_total", help, r.errors())
            });
            let text = self.metrics.render(redis.as_slice());
            return text_response(200, "text/plain; version=0.0.4; charset=utf-8", text);
        }
        let limit = if auth::is_upload_route(&path) {
            self.settings.max_body_bytes.max(self.settings.max_upload_bytes + UPLOAD_FRAMING)
        } else {
            self.settings.max_body_bytes
        };
        if declared_length(&req).is_some_and(|n| n > limit) {
            return body::too_large(limit);
        }
        let headers = req.headers_mut();
        headers.remove(IDENTITY_HEADER);
        headers.remove(ROLE_HEADER);
        let client = self.settings.trusted_proxies.client(conn.peer.ip(), headers);
        if let Ok(peer) = http::HeaderValue::from_str(&client.to_string()) {
            headers.insert(PEER_HEADER, peer);
        }
        if let Some(who) = user.or(admin.clone()).and_then(|w| http::HeaderValue::from_str(&w).ok()) {
            headers.insert(IDENTITY_HEADER, who);
        }
        let without_keys = self.keys.is_empty() && self.admin_keys.is_empty();
        if admin.is_some() || without_keys {
            headers.insert(ROLE_HEADER, http::HeaderValue::from_static("admin"));
        }
        let (parts, incoming) = req.into_parts();
        let bytes = match body::read(incoming, limit, self.settings.body_timeout).await {
            Ok(b) => b,
            Err(refusal) => return refusal,
        };
        let req = hyper::Request::from_parts(parts, http_body_util::Full::new(bytes));
        match self.instances.run(req, track.clone()).await {
            Ok(r) => r,
            Err(e) if e.is::<Busy>() => {
                self.metrics.busy();
                tracing::warn!(id = %track.id, max_instances = self.settings.max_instances,
                    "every handler instance is taken; answering 503");
                let mut resp = error_response(
                    503,
                    "server_error",
                    "server_busy",
                    "Every request handler is busy; retry the request shortly.",
                );
                resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                resp
            }
            // The task has logged the reason.
            Err(_) if track.timed_out.load(Ordering::Relaxed) => error_response(
                504,
                "server_error",
                "handler_timeout",
                "The request handler did not answer within its deadline.",
            ),
            Err(_) => error_response(500, "server_error", "handler_failed", "The request handler failed."),
        }
    }
}

/// The header naming the caller's key to the handler.
pub const IDENTITY_HEADER: &str = "x-tern-identity";
/// The header telling the handler the caller holds an admin key.
const ROLE_HEADER: &str = "x-tern-role";
/// The header naming the client's address to the handler (sign-in limits).
const PEER_HEADER: &str = "x-tern-peer";
/// Room for a multipart upload's boundaries and part headers beyond the file.
const UPLOAD_FRAMING: u64 = 64 << 10;

/// Makes sure `req` names the host it is for (RFC 9112 section 3.2): one
/// `Host` header of visible ASCII. A request without one is 400 on HTTP/1.1;
/// on HTTP/1.0 (which has no such rule), or with an empty one (allowed for
/// a target without authority), it gets the address the connection came
/// to. The error says what is wrong.
fn settle_host(req: &mut hyper::Request<hyper::body::Incoming>, conn: &ConnState) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let local = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err("A request may carry one Host header, not several."),
        (Some(host), None) if host.is_empty() => true,
        (Some(host), None) if host.to_str().is_err() => {
            return Err("The Host header must be a host name or address in visible ASCII.")
        }
        (Some(_), None) => false,
        (None, _) if req.uri().authority().is_some() => false,
        (None, _) if req.version() <= http::Version::HTTP_10 => true,
        (None, _) => return Err("An HTTP/1.1 request must carry a Host header."),
    };
    if local {
        let host = http::HeaderValue::from_str(&conn.local.to_string()).map_err(|_| "No usable Host header.")?;
        req.headers_mut().insert(http::header::HOST, host);
    }
    Ok(())
}

fn declared_length(req: &hyper::Request<hyper::body::Incoming>) -> Option<u64> {
    req.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

//! What `tern serve`'s flags set for the HTTP side: the handler instances'
//! limits and the connections' limits.

use std::time::Duration;

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
    /// Time a client has to send a request's body once its headers are in.
    pub body_timeout: Duration,
    /// Idle time after which a kept-alive connection is closed.
    pub keep_alive: Duration,
    /// Largest request head (431 beyond).
    pub max_header_bytes: usize,
    /// Largest request body, declared or sent (413 beyond).
    pub max_body_bytes: u64,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Largest component `POST /admin/component` accepts.
    pub max_component_bytes: usize,
    /// Largest file the app layer's upload route takes (its body may be
    /// this plus the multipart framing).
    pub max_upload_bytes: u64,
    /// Gzip whole textual responses for clients that accept it.
    pub compress: bool,
    /// The watched `--component` file: an upload is written there too, so
    /// every replica watching the same file swaps to it.
    pub component_file: Option<std::path::PathBuf>,
    /// Whose `X-Forwarded-For` names the client.
    pub trusted_proxies: crate::proxies::TrustedProxies,
    /// Open WebUI's frontend folder, preopened read-only for the handler at
    /// [`WEBUI_GUEST_DIR`].
    pub webui: Option<std::path::PathBuf>,
}

/// Where the handler sees `--webui`'s folder.
pub const WEBUI_GUEST_DIR: &str = "/webui";

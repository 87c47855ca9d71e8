//! What the host gives the app layer (accounts, chats, files): its
//! database, the settings and secrets `wasi:config/store` answers
//! (`config_store.rs`), and the one upstream that images and audio may be
//! forwarded to. Every other outgoing request a component makes is refused.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::database::Database;

/// The app layer's share of a server.
#[derive(Default)]
pub struct App {
    /// Set once the database is open and migrated (PostgreSQL may come up
    /// after tern; until then components find no database).
    database: OnceLock<Database>,
    /// What `wasi:config/store` answers, keys in `snake_case`, but for
    /// `jwt_secret`.
    pub config: Vec<(String, String)>,
    /// The sign-in signing secret, once known (with PostgreSQL and no
    /// `--jwt-secret`, it is the one the database keeps for every replica).
    jwt_secret: OnceLock<String>,
    /// Scheme and authority (`https://api.example.com`) outgoing requests
    /// may go to.
    pub media_upstream: Option<(http::uri::Scheme, http::uri::Authority)>,
}

impl App {
    pub fn new(
        config: Vec<(String, String)>,
        media_upstream: Option<(http::uri::Scheme, http::uri::Authority)>,
    ) -> Self {
        Self { config, media_upstream, ..Self::default() }
    }

    pub fn database(&self) -> Option<&Database> {
        self.database.get()
    }

    /// Makes the opened database and its signing secret available.
    pub fn connected(&self, database: Database, jwt_secret: String) {
        let _ = self.jwt_secret.set(jwt_secret);
        let _ = self.database.set(database);
    }

    /// The setting `key` answers through `wasi:config/store`.
    pub fn setting(&self, key: &str) -> Option<String> {
        match key {
            "jwt_secret" => self.jwt_secret.get().cloned(),
            _ => self.config.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()),
        }
    }

    /// What `wasi:config/store` answers, in order.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut all = self.config.clone();
        if let Some(secret) = self.jwt_secret.get() {
            all.push(("jwt_secret".to_string(), secret.clone()));
        }
        all
    }

    /// The scheme and authority of an upstream URL.
    pub fn upstream_origin(url: &str) -> anyhow::Result<(http::uri::Scheme, http::uri::Authority)> {
        let uri: http::Uri = url.parse().map_err(|e| anyhow::anyhow!("--media-upstream {url:?}: {e}"))?;
        match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) if matches!(scheme.as_str(), "http" | "https") => {
                Ok((scheme.clone(), authority.clone()))
            }
            _ => anyhow::bail!("--media-upstream must be an http:// or https:// URL, not {url:?}"),
        }
    }
}

type SendFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

/// Sends a component's outgoing request only to the media upstream.
pub struct Outgoing {
    pub app: Arc<App>,
}

impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: SendFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, SendFuture), HttpError>> + Send> {
        let allowed = self.app.media_upstream.as_ref().is_some_and(|(scheme, authority)| {
            request.uri().scheme() == Some(scheme) && request.uri().authority() == Some(authority)
        });
        if !allowed {
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        wasmtime_wasi_http::default_hooks().send_request(request, options, fut)
    }
}

//! What the host gives the app layer (accounts, chats, files): its
//! database, the settings and secrets `wasi:config/store` answers
//! (`config_store.rs`), and the one upstream that images and audio may be
//! forwarded to. Every other outgoing request a component makes is refused.

use std::future::Future;
use std::sync::Arc;

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::database::Database;

/// The app layer's share of a server.
#[derive(Default)]
pub struct App {
    /// None only where no server runs (no component asks for it there).
    pub database: Option<Database>,
    /// What `wasi:config/store` answers, keys in `snake_case`.
    pub config: Vec<(String, String)>,
    /// Scheme and authority (`https://api.example.com`) outgoing requests
    /// may go to.
    pub media_upstream: Option<(http::uri::Scheme, http::uri::Authority)>,
}

impl App {
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

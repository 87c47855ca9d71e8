//! `/admin/component`: the host's own route for the handler component.
//!
//! - `GET` reports the active component: digest, size, source, load time,
//!   whether its compiled code came from the disk cache, and its world.
//! - `POST` with the component's bytes as the body compiles and links it off
//!   the request path and swaps it in; 422 with the reason if it fails (the
//!   active one keeps serving). With `--component FILE`, the accepted bytes
//!   also replace FILE (written beside it, then renamed): every replica that
//!   watches the same file swaps to them, and a restart keeps them.
//!
//! Both need an admin key (`--admin-key`); without one configured the route
//! answers 403, so a server never takes code from an unauthenticated caller.
//! A valid API key that is not an admin key is 403 too (the key is good,
//! its role is not); no key or an unknown one is 401.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Keys;
use crate::components::Components;
use crate::responses::{error_response, text_response, unauthorized, Response};
use crate::server::body;

/// Who may use the admin route, and how much it takes.
pub struct AdminPolicy<'a> {
    pub admin_keys: &'a Keys,
    /// The server's API keys: valid, but not for this route.
    pub api_keys: &'a Keys,
    /// Largest upload.
    pub max_bytes: usize,
    /// Time an upload may take to arrive.
    pub body_timeout: Duration,
    /// The watched `--component` file, if any.
    pub component_file: Option<&'a Path>,
}

/// Answers `/admin/component` for callers holding one of the admin keys.
pub async fn component(
    components: &Arc<Components>,
    policy: &AdminPolicy<'_>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let admin_keys = policy.admin_keys;
    if admin_keys.is_empty() {
        return error_response(
            403,
            "invalid_request_error",
            "admin_disabled",
            "The admin API is off; start tern with --admin-key to use it.",
        );
    }
    if !admin_keys.allows(req.headers()) {
        if policy.api_keys.allows(req.headers()) {
            return error_response(
                403,
                "permission_error",
                "forbidden",
                "This API key may not manage the handler; use an admin key (tern serve --admin-key).",
            );
        }
        return unauthorized();
    }
    match *req.method() {
        http::Method::GET => describe(components),
        http::Method::POST => upload(components, policy, req).await,
        _ => {
            let mut resp = error_response(
                405,
                "invalid_request_error",
                "method_not_allowed",
                "Use GET to see the active component, POST to replace it.",
            );
            resp.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("GET, POST"));
            resp
        }
    }
}

fn describe(components: &Components) -> Response {
    text_response(200, "application/json", components.active().describe().to_string())
}

async fn upload(
    components: &Arc<Components>,
    policy: &AdminPolicy<'_>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let wasm = match body::read(req.into_body(), policy.max_bytes as u64, policy.body_timeout).await {
        Ok(b) => b.to_vec(),
        Err(refusal) => return refusal,
    };
    if wasm.is_empty() {
        return error_response(400, "invalid_request_error", "empty_component", "The body must be a component.");
    }
    let bytes = policy.component_file.map(|_| wasm.clone());
    match components.load(wasm, "upload".into()).await {
        Ok(loaded) => {
            let mut described = loaded.describe();
            if let (Some(path), Some(bytes)) = (policy.component_file, bytes) {
                let written = replace_file(path, &bytes);
                if let Err(e) = &written {
                    tracing::error!(path = %path.display(), error = %e,
                        "the uploaded handler serves here but could not replace the watched file");
                }
                described["file"] = serde_json::json!({
                    "path": path.display().to_string(),
                    "written": written.is_ok(),
                });
            }
            text_response(200, "application/json", described.to_string())
        }
        Err(e) => error_response(
            422,
            "invalid_request_error",
            "component_rejected",
            &format!("The component was rejected and the active one keeps serving: {e:#}"),
        ),
    }
}

/// Writes `bytes` beside `path` and renames them over it, so a watcher never
/// reads half a component.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.part", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

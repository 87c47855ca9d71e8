//! `GET /`: the chat page for browsers, Ollama's liveness answer for
//! everything else; and the page's static files under `/static/`.
//!
//! The page is plain HTML, CSS and JavaScript compiled into the component
//! (`page/`), with no build step and nothing loaded from elsewhere: it talks
//! to `/v1/models` and `/v1/chat/completions` on the same server.

use crate::error::ApiError;
use crate::http::{Request, Response};

/// What `GET /` says to clients that do not ask for HTML, word for word
/// Ollama's, which its clients probe for.
pub const LIVENESS_TEXT: &str = "Ollama is running";

/// The chat page's HTML.
const INDEX_HTML: &str = include_str!("page/index.html");

/// A file served under `/static/`.
struct StaticFile {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file under `/static/`.
const STATIC_FILES: [StaticFile; 2] = [
    StaticFile { name: "chat.css", content_type: "text/css; charset=utf-8", body: include_str!("page/chat.css") },
    StaticFile { name: "chat.js", content_type: "text/javascript; charset=utf-8", body: include_str!("page/chat.js") },
];

/// Scripts, styles and connections only from this server: the page needs
/// nothing else, and a stray injected tag can then load nothing.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /` and `HEAD /`: the chat page when `accept` names `text/html` (a
/// browser), otherwise 200 `Ollama is running` as plain text.
pub fn root(req: &Request) -> Response {
    let response = if wants_html(req.header("accept")) {
        asset(req, "text/html; charset=utf-8", INDEX_HTML)
            .with_header("content-security-policy", CONTENT_SECURITY_POLICY)
    } else {
        Response::text(200, "text/plain; charset=utf-8", LIVENESS_TEXT.as_bytes().to_vec())
    };
    response.with_header("vary", "accept")
}

/// `GET /static/{name}`: one of the page's files, or 404.
pub fn static_file(req: &Request, name: &str) -> Result<Response, ApiError> {
    match STATIC_FILES.iter().find(|f| f.name == name) {
        Some(file) => Ok(asset(req, file.content_type, file.body).with_header("x-content-type-options", "nosniff")),
        None => Err(ApiError::NotFound { method: req.method.clone(), path: req.path.clone() }),
    }
}

/// Whether an `accept` header lists `text/html` with a non-zero quality.
pub fn wants_html(accept: Option<&str>) -> bool {
    accept.unwrap_or("").split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| matches!(p.split_once('='), Some((k, q)) if k.trim() == "q" && q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)));
        media.eq_ignore_ascii_case("text/html") && !refused
    })
}

/// A compiled-in file with an entity tag. Browsers revalidate on every use
/// (`no-cache`) and get 304 while the tag matches, so a swapped handler's
/// page shows at the next load without a stale copy in between.
fn asset(req: &Request, content_type: &str, body: &str) -> Response {
    let tag = entity_tag(body);
    let matches =
        req.header("if-none-match").is_some_and(|list| list.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let response =
        if matches { Response::empty(304) } else { Response::text(200, content_type, body.as_bytes().to_vec()) };
    response.with_header("etag", &tag).with_header("cache-control", "no-cache")
}

/// A strong entity tag from the content (64-bit FNV-1a): any edit changes it.
pub fn entity_tag(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("\"{hash:016x}\"")
}

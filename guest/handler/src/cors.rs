//! Cross-origin resource sharing: which web origins may call the API from a
//! browser, and the headers that tell the browser so.
//!
//! The policy comes from `TERN_CORS_ORIGINS` (set by `tern serve
//! --cors-origin`): a comma-separated list of origins, or `*`. Unset or empty
//! means same-origin only, and then no response carries a CORS header. The
//! router applies the policy once, to every response, and answers preflights
//! itself; routes never see it.

use crate::error::ApiError;
use crate::http::{Request, Response};

/// Environment variable the host sets from `--cors-origin`.
pub const ORIGINS_VAR: &str = "TERN_CORS_ORIGINS";
/// Response headers a cross-origin script may read besides the CORS-safelisted
/// ones: cache hits, the handler version, back-off hints and request ids.
pub const EXPOSE_HEADERS: &str = "x-cache, x-tern-handler, retry-after, x-request-id";
/// Request headers always allowed in a preflight.
const ALWAYS_ALLOWED_HEADERS: [&str; 2] = ["authorization", "content-type"];
/// How long a browser may reuse a preflight answer, in seconds. Chromium caps
/// this at two hours; ten minutes keeps a changed policy from lingering.
pub const PREFLIGHT_MAX_AGE_SECONDS: u32 = 600;
/// Most extra request headers a preflight may ask for; a longer list is
/// refused rather than echoed.
const MAX_REQUESTED_HEADERS: usize = 16;
/// Longest header name echoed back to a preflight.
const MAX_HEADER_NAME_BYTES: usize = 64;

/// Which origins may make cross-origin requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsPolicy {
    /// Same-origin only: no CORS headers at all.
    SameOrigin,
    /// Any origin (`*`).
    AnyOrigin,
    /// Exactly these origins, lower-cased, without a trailing slash.
    Origins(Vec<String>),
}

impl CorsPolicy {
    /// The policy in `TERN_CORS_ORIGINS`.
    pub fn from_env() -> Self {
        Self::parse(std::env::var(ORIGINS_VAR).ok().as_deref().unwrap_or(""))
    }

    /// Parses a comma-separated origin list. `*` anywhere allows every
    /// origin; blank entries are skipped; an empty list is same-origin only.
    pub fn parse(list: &str) -> Self {
        let mut origins: Vec<String> = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                return CorsPolicy::AnyOrigin;
            }
            let origin = normalise(entry);
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        if origins.is_empty() {
            CorsPolicy::SameOrigin
        } else {
            CorsPolicy::Origins(origins)
        }
    }

    /// The `access-control-allow-origin` value for a request from `origin`,
    /// or `None` when that origin may not read the response.
    pub fn allow_origin<'a>(&self, origin: &'a str) -> Option<&'a str> {
        match self {
            CorsPolicy::SameOrigin => None,
            CorsPolicy::AnyOrigin => Some("*"),
            CorsPolicy::Origins(allowed) => allowed.contains(&normalise(origin)).then_some(origin),
        }
    }

    /// `response` with the CORS headers `req`'s origin is entitled to.
    /// Whenever a policy is configured the answer depends on `Origin`, so it
    /// says `vary: origin` even to requests without one, keeping shared
    /// caches from handing one origin's answer to another.
    pub fn decorate(&self, req: &Request, response: Response) -> Response {
        if *self == CorsPolicy::SameOrigin {
            return response;
        }
        let response = response.with_header("vary", "origin");
        match req.header("origin").and_then(|origin| self.allow_origin(origin)) {
            Some(allowed) => response
                .with_header("access-control-allow-origin", allowed)
                .with_header("access-control-expose-headers", EXPOSE_HEADERS),
            None => response,
        }
    }

    /// The answer to `OPTIONS` on a route accepting `methods`: a CORS
    /// preflight (with `Origin` and `Access-Control-Request-Method`) from an
    /// allowed origin gets 204 with the route's methods and the headers it
    /// may send; one from any other origin gets 403, so the refusal is
    /// readable in the browser's network panel. A plain `OPTIONS` gets 204
    /// with `allow`.
    pub fn preflight(&self, req: &Request, methods: &str) -> Result<Response, ApiError> {
        let empty = || Response::empty(204);
        let (Some(origin), Some(_)) = (req.header("origin"), req.header("access-control-request-method")) else {
            return Ok(empty().with_header("allow", &format!("{methods}, OPTIONS")));
        };
        if self.allow_origin(origin).is_none() {
            return Err(ApiError::OriginNotAllowed(origin.to_string()));
        }
        let headers = allowed_headers(req.header("access-control-request-headers").unwrap_or(""))?;
        Ok(empty()
            .with_header("access-control-allow-methods", methods)
            .with_header("access-control-allow-headers", &headers)
            .with_header("access-control-max-age", &PREFLIGHT_MAX_AGE_SECONDS.to_string()))
    }
}

/// An origin as browsers serialise it: lower case, no trailing slash.
fn normalise(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The `access-control-allow-headers` answer to a preflight asking for
/// `requested` (comma-separated): `authorization` and `content-type` always,
/// plus each requested name that is a valid header token, up to the limits.
pub fn allowed_headers(requested: &str) -> Result<String, ApiError> {
    let mut names: Vec<String> = ALWAYS_ALLOWED_HEADERS.iter().map(|h| h.to_string()).collect();
    let asked: Vec<&str> = requested.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    if asked.len() > MAX_REQUESTED_HEADERS {
        return Err(ApiError::param(
            "access-control-request-headers",
            format!("A preflight may ask for at most {MAX_REQUESTED_HEADERS} headers, but asked for {}.", asked.len()),
        ));
    }
    for name in asked {
        if name.len() > MAX_HEADER_NAME_BYTES || !name.bytes().all(is_token_byte) {
            return Err(ApiError::param(
                "access-control-request-headers",
                format!("`{}` is not a header name this server allows.", name.escape_default()),
            ));
        }
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names.join(", "))
}

/// A byte allowed in an HTTP header name (RFC 9110 `tchar`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

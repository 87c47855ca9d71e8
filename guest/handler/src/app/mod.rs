//! The app layer: accounts, chats and files in Open WebUI's API shapes
//! (`/api/v1/*`, `/api/config`, `/api/models`), on the database the host
//! provides through Spin's interfaces.
//!
//! How it fits:
//! 1. [`dispatch`] claims the app's paths before the inference routes; it
//!    needs a [`Platform`] (database, settings, the media upstream), which
//!    the export passes in a component and unit tests do not.
//! 2. Each request opens one database connection ([`db`]), authenticates
//!    the caller ([`auth`]: a sign-in token as bearer or cookie, or the
//!    user's own `sk-` key) and checks their role.
//! 3. The routes ([`users`], [`chats`], [`files`], [`meta`], [`media`])
//!    read and write through parameterised statements only; an id that is
//!    another user's reads as missing.
//!
//! Errors are Open WebUI's: a status and `{"detail": "..."}`.

pub mod auth;
mod chats;
mod completions;
pub mod db;
mod files;
pub mod media;
mod meta;
pub mod multipart;
pub mod socket;
mod users;

use serde_json::{json, Map, Value};

use crate::engine_client::EngineClient;

use crate::error::{error_body, ApiError};
use crate::http::{Request, Response};

pub use db::{Db, Row};
#[cfg(target_arch = "wasm32")]
pub use db::{Dialect, Val};

/// What the app layer needs from where it runs.
pub trait Platform {
    /// A setting or secret (`wasi:config/store`).
    fn setting(&self, key: &str) -> Option<String>;
    /// A connection to the app's database.
    fn database(&self) -> Result<Box<dyn Db>, AppError>;
    /// Sends a request to the configured media upstream.
    fn forward(&self, request: media::Outgoing) -> Result<media::Incoming, String>;
    /// Socket.IO's sessions, held by the host.
    fn sessions(&self) -> &dyn socket::Sessions;
    /// An owned handle to the same platform, for work after the response.
    fn share(&self) -> Box<dyn Platform>;
}

/// A refused or failed app request: a status and Open WebUI's `detail`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppError {
    pub status: u16,
    pub detail: String,
}

impl AppError {
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        AppError { status, detail: detail.into() }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, detail)
    }

    /// No credentials, or credentials that are not (or no longer) valid.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(401, detail)
    }

    /// Signed in, but the role or owner does not allow this.
    pub fn forbidden() -> Self {
        Self::new(403, messages::ACCESS_PROHIBITED)
    }

    /// Missing, or another user's.
    pub fn not_found() -> Self {
        Self::new(404, messages::NOT_FOUND)
    }

    /// A database failure; the statement's text is logged, not sent.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub fn database(why: impl std::fmt::Display) -> Self {
        eprintln!("app database error: {why}");
        Self::new(503, "The database is unavailable; try again shortly.")
    }

    fn response(&self) -> Response {
        Response::json(self.status, &json!({ "detail": self.detail }))
    }
}

impl From<ApiError> for AppError {
    fn from(err: ApiError) -> Self {
        let (status, body) = error_body(&err);
        let detail = body["error"]["message"].as_str().unwrap_or("Invalid request.").to_string();
        AppError { status, detail }
    }
}

/// Open WebUI's wording for the common refusals.
pub mod messages {
    pub const NOT_AUTHENTICATED: &str = "Not authenticated";
    pub const INVALID_TOKEN: &str = "Your session has expired or the token is invalid. Please sign in again.";
    pub const ACCESS_PROHIBITED: &str =
        "You do not have permission to access this resource. Please contact your administrator for assistance.";
    pub const ACTION_PROHIBITED: &str = "The requested action has been restricted as a security measure.";
    pub const NOT_FOUND: &str = "We could not find what you're looking for :/";
    pub const INVALID_CRED: &str =
        "The email or password provided is incorrect. Please check for typos and try logging in again.";
    pub const EMAIL_TAKEN: &str = "Uh-oh! This email is already registered. Sign in with your existing account or choose another email to start anew.";
    pub const INVALID_EMAIL: &str = "The email format you entered is invalid. Please double-check and make sure you're using a valid email address (e.g., yourname@example.com).";
    pub const INCORRECT_PASSWORD: &str = "The password provided is incorrect. Please check for typos and try again.";
    pub const RATE_LIMITED: &str = "Too many failed sign-ins; try again in a few minutes.";
}

/// Everything an app route is given.
pub struct Ctx<'a> {
    pub req: &'a Request,
    pub engine: &'a dyn EngineClient,
    pub platform: &'a dyn Platform,
    pub db: Box<dyn Db>,
}

impl Ctx<'_> {
    /// The body as a JSON object (an empty body is an empty object).
    pub fn body(&self) -> Result<Map<String, Value>, AppError> {
        if self.req.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        Ok(crate::json::parse_object(&self.req.body)?)
    }

    /// Query parameter `name` as a page number (1-based; absent: None).
    pub fn page(&self) -> Result<Option<u64>, AppError> {
        match self.req.query_param("page") {
            None => Ok(None),
            Some(p) => match p.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Some(n)),
                _ => Err(AppError::bad_request("'page' must be a whole number of at least 1.")),
            },
        }
    }
}

/// True for the paths the app layer answers.
pub fn claims(path: &str) -> bool {
    path.starts_with("/api/v1/")
        || path.starts_with("/api/tasks/")
        || matches!(
            path,
            "/api/config"
                | "/api/models"
                | "/api/changelog"
                | "/api/usage"
                | "/api/chat/completions"
                | "/api/chat/completed"
        )
        || socket::is_path(path)
}

/// Answers an app path (`None` when `req` is not one) with the database,
/// settings and upstream of `platform`; without one, 503.
pub fn dispatch(req: &Request, engine: &dyn EngineClient, platform: Option<&dyn Platform>) -> Option<Response> {
    if !claims(&req.path) {
        return None;
    }
    let answer = match platform {
        // A poll waits without holding a database connection.
        Some(platform) if socket::is_path(&req.path) => socket::route(req, engine, platform),
        Some(platform) => platform.database().and_then(|db| {
            let mut ctx = Ctx { req, engine, platform, db };
            route(&mut ctx)
        }),
        None => Err(AppError::new(503, "This server has no app database.")),
    };
    let response = answer.unwrap_or_else(|e| e.response());
    Some(response.with_header("cache-control", "no-store"))
}

fn route(ctx: &mut Ctx<'_>) -> Result<Response, AppError> {
    let path = ctx.req.path.clone();
    let method = ctx.req.method.clone();
    if let Some(rest) = path.strip_prefix("/api/v1/auths/") {
        return auth::route(ctx, &method, rest);
    }
    if let Some(rest) = path.strip_prefix("/api/v1/users/") {
        return users::route(ctx, &method, rest);
    }
    if let Some(rest) = path.strip_prefix("/api/v1/chats/") {
        return chats::route(ctx, &method, rest);
    }
    if let Some(rest) = path.strip_prefix("/api/v1/files/").or((path == "/api/v1/files").then_some("")) {
        return files::route(ctx, &method, rest);
    }
    if let Some(kind) = path.strip_prefix("/api/v1/tasks/").and_then(|rest| rest.strip_suffix("/completions")) {
        return completions::task(ctx, &method, kind);
    }
    if path.starts_with("/api/tasks/") || path.starts_with("/api/chat/") {
        return completions::route(ctx, &method, &path);
    }
    if let Some(rest) = path.strip_prefix("/api/v1/images/").or(path.strip_prefix("/api/v1/audio/")) {
        let family = if path.starts_with("/api/v1/images/") { "images" } else { "audio" };
        return media::route(ctx, &method, family, rest);
    }
    meta::route(ctx, &method, &path)
}

/// 405 naming the methods a path takes.
pub fn method_not_allowed(allow: &str) -> AppError {
    AppError::new(405, format!("Method not allowed; this path takes {allow}."))
}

/// A JSON answer with status 200.
pub fn ok(value: Value) -> Result<Response, AppError> {
    Ok(Response::json(200, &value))
}

/// 32 random hex digits from the host's random source.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the host's random source");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random (version 4) UUID, as Open WebUI's ids are.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the host's random source");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    crate::wire::unix_seconds() as i64
}

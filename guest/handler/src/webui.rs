//! Open WebUI's built web frontend, served from a folder (`tern serve
//! --webui DIR`, fetched by `scripts/fetch-webui`).
//!
//! The host preopens the folder read-only and names it in `TERN_WEBUI`;
//! `TERN_WEBUI_VERSION` is the version the frontend was built as, which
//! `/api/version` and `/api/config` must answer or the page reloads.
//!
//! A `GET` whose path is a file in the folder gets that file, read in
//! pieces as it is written. Hashed build files (`/_app/immutable/`) are
//! cached for a year; every other file is revalidated by its entity tag
//! (size and modification time). Any other `GET` from a browser that no
//! route answers gets the index page, so client-side routes such as
//! `/auth` and `/c/{id}` load the app. API paths never fall back to it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::http::{Body, Request, Response};
use crate::page::wants_html;
use crate::wire::HANDLER_VERSION;

/// The folder's guest path.
pub const DIR_VAR: &str = "TERN_WEBUI";
/// The frontend's version.
pub const VERSION_VAR: &str = "TERN_WEBUI_VERSION";

/// Bytes read from a file per piece of the response.
const PIECE: usize = 256 << 10;

/// Paths that are the APIs', never the frontend's.
const API_PREFIXES: [&str; 5] = ["/api/", "/v1/", "/ws/", "/ollama/", "/openai/"];

/// The frontend folder, when the server has one.
pub struct Frontend {
    dir: PathBuf,
}

impl Frontend {
    /// The folder named in `TERN_WEBUI`.
    pub fn from_env() -> Option<Self> {
        std::env::var_os(DIR_VAR).filter(|d| !d.is_empty()).map(|dir| Frontend { dir: dir.into() })
    }

    /// The version the frontend was built as.
    pub fn version() -> Option<String> {
        Self::from_env()?;
        std::env::var(VERSION_VAR).ok().filter(|v| !v.is_empty())
    }

    /// The file `req` names, or the index page for `/` from a browser;
    /// `None` for anything else.
    pub fn file(&self, req: &Request) -> Option<Response> {
        if !matches!(req.method.as_str(), "GET" | "HEAD") || is_api(&req.path) {
            return None;
        }
        if req.path == "/" {
            return wants_html(req.header("accept")).then(|| self.index(req)).flatten();
        }
        let relative = safe_relative(&req.path)?;
        let cache = if relative.starts_with("_app/immutable/") { Cache::Forever } else { Cache::Revalidate };
        self.serve(req, &self.dir.join(relative), cache)
    }

    /// The index page for a browser's `GET` of a path no route answers.
    pub fn fallback(&self, req: &Request) -> Option<Response> {
        let browser = matches!(req.method.as_str(), "GET" | "HEAD") && wants_html(req.header("accept"));
        (browser && !is_api(&req.path)).then(|| self.index(req)).flatten()
    }

    fn index(&self, req: &Request) -> Option<Response> {
        self.serve(req, &self.dir.join("index.html"), Cache::Never)
    }

    fn serve(&self, req: &Request, path: &Path, cache: Cache) -> Option<Response> {
        let file = File::open(path).ok()?;
        let meta = file.metadata().ok().filter(|m| m.is_file())?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
        let tag = format!("\"{:x}-{:x}\"", meta.len(), modified.as_nanos());
        let cache_control = match cache {
            Cache::Forever => "public, max-age=31536000, immutable",
            Cache::Revalidate => "no-cache",
            Cache::Never => "no-store",
        };
        let response = if matches!(cache, Cache::Never) {
            Response::text(200, content_type(path), Vec::new())
        } else if req.header("if-none-match").is_some_and(|l| l.split(',').any(|t| t.trim() == tag)) {
            return Some(Response::empty(304).with_header("etag", &tag).with_header("cache-control", cache_control));
        } else {
            Response::text(200, content_type(path), Vec::new()).with_header("etag", &tag)
        };
        let body = if req.method == "HEAD" { Body::Full(Vec::new()) } else { Body::Stream(Box::new(Pieces(file))) };
        Some(
            Response { body, ..response }
                .with_header("cache-control", cache_control)
                .with_header("x-content-type-options", "nosniff"),
        )
    }
}

/// The version `/api/version` and `/api/config` report: the frontend's
/// when there is one (it reloads itself on any other), else the handler's.
pub fn reported_version() -> String {
    Frontend::version().unwrap_or_else(|| HANDLER_VERSION.to_string())
}

#[derive(Clone, Copy)]
enum Cache {
    /// Hashed build files: their name changes with their content.
    Forever,
    /// Checked against the entity tag at every use.
    Revalidate,
    /// The index page: it names the current build's files.
    Never,
}

/// A file read in pieces while the response is written.
struct Pieces(File);

impl Iterator for Pieces {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut piece = vec![0; PIECE];
        let n = self.0.read(&mut piece).ok().filter(|&n| n > 0)?;
        piece.truncate(n);
        Some(piece)
    }
}

fn is_api(path: &str) -> bool {
    API_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// `path` (percent-decoded) as a path inside the folder, or `None` when it
/// could leave it or name something odd: `..`, `.` or empty segments,
/// backslashes, NUL, or a hidden file.
fn safe_relative(path: &str) -> Option<String> {
    let decoded = percent_decode(path.strip_prefix('/')?)?;
    let fine = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains(['\\', '\0', ':']);
    decoded.split('/').all(fine).then_some(decoded)
}

/// `%XX` escapes decoded; `None` for a bad escape or invalid UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The media type of a file, by its extension.
fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "txt" | "md" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_leave_the_folder_are_refused() {
        assert_eq!(safe_relative("/_app/immutable/a.js").as_deref(), Some("_app/immutable/a.js"));
        assert_eq!(safe_relative("/static/a%20b.png").as_deref(), Some("static/a b.png"));
        for bad in
            ["/../etc/passwd", "/a/../../b", "/%2e%2e/x", "/a//b", "/.env", "/a\\b", "/a%00", "/%zz", "/c:x", "/"]
        {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
    }

    /// A frontend folder with an index page, a hashed asset and a plain file.
    fn folder(name: &str) -> Frontend {
        let dir = std::env::temp_dir().join(format!("tern-webui-{name}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("_app/immutable")).unwrap();
        std::fs::create_dir_all(dir.join("static")).unwrap();
        std::fs::write(dir.join("index.html"), "<!doctype html>app").unwrap();
        std::fs::write(dir.join("_app/immutable/x.js"), "js".repeat(PIECE)).unwrap();
        std::fs::write(dir.join("static/a.png"), [137, 80]).unwrap();
        Frontend { dir }
    }

    fn body(response: Response) -> Vec<u8> {
        match response.body {
            Body::Stream(pieces) => pieces.flatten().collect(),
            Body::Full(b) | Body::Then(b, _) => b,
        }
    }

    fn get(path: &str, accept: &str) -> Request {
        Request::new("GET", path).with_header("accept", accept)
    }

    #[test]
    fn files_are_served_with_their_caching() {
        let f = folder("files");
        let js = f.file(&get("/_app/immutable/x.js", "*/*")).expect("a file");
        assert_eq!(js.header("cache-control"), Some("public, max-age=31536000, immutable"));
        assert_eq!(js.header("content-type"), Some("text/javascript; charset=utf-8"));
        assert_eq!(body(js).len(), 2 * PIECE, "read in pieces, whole");
        let png = f.file(&get("/static/a.png", "*/*")).expect("a file");
        assert_eq!(png.header("cache-control"), Some("no-cache"));
        let tag = png.header("etag").expect("a tag").to_string();
        let again = f.file(&get("/static/a.png", "*/*").with_header("if-none-match", &tag)).expect("a file");
        assert_eq!(again.status, 304);
        let index = f.file(&get("/", "text/html")).expect("the index");
        assert_eq!(index.header("cache-control"), Some("no-store"));
        assert_eq!(body(index), b"<!doctype html>app");
        // `/` for a client that is not a browser is the server's own.
        assert!(f.file(&get("/", "application/json")).is_none());
    }

    #[test]
    fn client_routes_fall_back_to_the_index_but_api_paths_and_escapes_do_not() {
        let f = folder("fallback");
        assert!(f.file(&get("/c/123", "text/html")).is_none(), "not a file");
        let page = f.fallback(&get("/c/123", "text/html,*/*")).expect("the index");
        assert_eq!(body(page), b"<!doctype html>app");
        assert!(f.fallback(&get("/c/123", "application/json")).is_none());
        for path in ["/api/v1/nothing", "/v1/nothing", "/ws/socket.io/x", "/ollama/x", "/openai/x"] {
            assert!(
                f.file(&get(path, "text/html")).is_none() && f.fallback(&get(path, "text/html")).is_none(),
                "{path}"
            );
        }
        for path in ["/../index.html", "/static/../../etc/passwd", "/%2e%2e/index.html", "/static//a.png"] {
            assert!(f.file(&get(path, "*/*")).is_none(), "{path}");
        }
        assert!(f.file(&Request::new("POST", "/static/a.png")).is_none());
    }

    #[test]
    fn files_have_their_types() {
        assert_eq!(content_type(Path::new("a/b.JS")), "text/javascript; charset=utf-8");
        assert_eq!(content_type(Path::new("x.wasm")), "application/wasm");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}

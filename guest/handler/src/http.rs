//! Plain HTTP values the router works on.
//!
//! Nothing in this module touches wasi:http, so the router and its tests run
//! natively; `export.rs` converts to and from the wasi:http resources.

use std::fmt;

/// Largest request body the handler reads. Chat requests are text; anything
/// bigger is refused before it costs memory in the instance.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An incoming request, fully read.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The method as sent (methods are case-sensitive), e.g. `POST`.
    pub method: String,
    /// Path without the query, e.g. `/v1/models`.
    pub path: String,
    /// Query string without the `?`, if any.
    pub query: Option<String>,
    /// Header names in lower case, values as text (invalid UTF-8 replaced).
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
}

impl Request {
    /// A request for `path_with_query` (e.g. `/v1/models?x=1`) with no headers
    /// and no body.
    pub fn new(method: &str, path_with_query: &str) -> Self {
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path, Some(query.to_string())),
            None => (path_with_query, None),
        };
        Request {
            method: method.to_string(),
            path: if path.is_empty() { "/".to_string() } else { path.to_string() },
            query,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The same request with header `name` added.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// The same request carrying `body`.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a
    /// space); invalid UTF-8 is replaced.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// What a response carries after its headers.
pub enum Body {
    /// The whole body, written at once.
    Full(Vec<u8>),
    /// Pieces produced lazily while the response is written, e.g. one SSE
    /// event each. Dropping the iterator stops the work behind it.
    Stream(Box<dyn Iterator<Item = Vec<u8>>>),
    /// The whole body, then work that runs once the client has it: the
    /// instance lives on until the work ends (under the request's
    /// deadline), as a generation Open WebUI's frontend follows over
    /// Socket.IO does.
    Then(Vec<u8>, Box<dyn FnOnce()>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Full(bytes) => f.debug_tuple("Full").field(&String::from_utf8_lossy(bytes)).finish(),
            Body::Stream(_) => f.write_str("Stream(..)"),
            Body::Then(bytes, _) => f.debug_tuple("Then").field(&String::from_utf8_lossy(bytes)).finish(),
        }
    }
}

/// A response to write back.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Body,
}

impl Response {
    /// `status` with `value` as an `application/json` body.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Body::Full(value.to_string().into_bytes()),
        }
    }

    /// `status` with no body and no headers, e.g. 204 or 304.
    pub fn empty(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Body::Full(Vec::new()) }
    }

    /// `status` with `body` of type `content_type`.
    pub fn text(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Response { status, headers: vec![("content-type".into(), content_type.into())], body: Body::Full(body) }
    }

    /// A 200 `text/event-stream` whose events come from `events`.
    pub fn event_stream(events: impl Iterator<Item = Vec<u8>> + 'static) -> Self {
        Response {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/event-stream".into()),
                ("cache-control".into(), "no-cache".into()),
            ],
            body: Body::Stream(Box::new(events)),
        }
    }

    /// The same response, with `work` to run once its (whole) body is sent.
    pub fn then(self, work: impl FnOnce() + 'static) -> Self {
        let body = match self.body {
            Body::Full(bytes) | Body::Then(bytes, _) => Body::Then(bytes, Box::new(work)),
            Body::Stream(pieces) => {
                let mut work = Some(work);
                Body::Stream(Box::new(pieces.chain(std::iter::from_fn(move || {
                    if let Some(work) = work.take() {
                        work();
                    }
                    None
                }))))
            }
        };
        Response { body, ..self }
    }

    /// The same response with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// `text` with `%XX` escapes decoded and `+` read as a space; a malformed
/// escape stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

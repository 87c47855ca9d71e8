//! Requests to the upstream over `wasi:http/outgoing-handler`: its URL from
//! `TERN_UPSTREAM`, its key from `TERN_UPSTREAM_KEY`.

use serde_json::Value;

use crate::bindings::exports::tern::llm::inference::Error;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    Fields, IncomingBody, IncomingResponse, InputStream, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::poll::Pollable;
use crate::bindings::wasi::io::streams::StreamError;

/// Most bytes one `blocking-write-and-flush` may carry (wasi:io's limit).
const WRITE_CHUNK_BYTES: usize = 4096;
/// Bytes asked for per read.
const READ_CHUNK_BYTES: u64 = 64 * 1024;

fn unavailable(why: impl Into<String>) -> Error {
    Error::Unavailable(why.into())
}

/// The upstream's scheme, authority and path prefix.
fn origin() -> Result<(Scheme, String, String), Error> {
    let url = std::env::var("TERN_UPSTREAM")
        .map_err(|_| unavailable("no upstream: set TERN_UPSTREAM to the URL of a tern serve or llama-server"))?;
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| unavailable(format!("TERN_UPSTREAM={url} has no scheme")))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(unavailable(format!("TERN_UPSTREAM={url} is not http or https"))),
    };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    Ok((scheme, authority.to_string(), prefix.to_string()))
}

/// Sends a request and waits for the response's head.
fn send(method: Method, path: &str, body: Option<&[u8]>) -> Result<IncomingResponse, Error> {
    let (scheme, authority, prefix) = origin()?;
    let headers = Fields::new();
    let set = |name: &str, value: &str| {
        headers.append(name, value.as_bytes()).map_err(|e| Error::Internal(format!("header {name}: {e:?}")))
    };
    if let Ok(key) = std::env::var("TERN_UPSTREAM_KEY") {
        set("authorization", &format!("Bearer {key}"))?;
    }
    if let Some(body) = body {
        set("content-type", "application/json")?;
        set("content-length", &body.len().to_string())?;
    }
    let request = OutgoingRequest::new(headers);
    let failed = |what: &str| Error::Internal(format!("building the upstream request: {what}"));
    request.set_method(&method).map_err(|()| failed("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| failed("scheme"))?;
    request.set_authority(Some(&authority)).map_err(|()| failed("authority"))?;
    request.set_path_with_query(Some(&format!("{prefix}{path}"))).map_err(|()| failed("path"))?;
    let outgoing = request.body().map_err(|()| failed("body"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| unavailable(format!("the upstream: {e:?}")))?;
    {
        let stream = outgoing.write().map_err(|()| failed("body stream"))?;
        for chunk in body.unwrap_or_default().chunks(WRITE_CHUNK_BYTES) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| unavailable(format!("sending to the upstream: {e:?}")))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| unavailable(format!("sending to the upstream: {e:?}")))?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(e))) => Err(unavailable(format!("the upstream cannot be reached: {e:?}"))),
        _ => Err(unavailable("the upstream did not answer")),
    }
}

/// A response's whole body.
fn read_all(response: IncomingResponse) -> Result<Vec<u8>, Error> {
    let mut stream = Stream::of(response)?;
    let mut out = Vec::new();
    loop {
        stream.subscribe().block();
        match stream.read()? {
            Some(bytes) => out.extend_from_slice(&bytes),
            None => return Ok(out),
        }
    }
}

/// An upstream's refusal as the interface's error, keeping its meaning
/// (and so the status the handler answers with).
fn refusal(status: u16, body: &[u8], model: Option<&str>) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().or(v["error"].as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    match status {
        404 => match model {
            Some(model) => Error::UnknownModel(model.to_string()),
            None => Error::InvalidRequest(message),
        },
        429 => Error::Overloaded(message),
        503 => Error::Unavailable(message),
        400..=499 => Error::InvalidRequest(message),
        _ => Error::Internal(format!("the upstream answered {status}: {message}")),
    }
}

fn json_of(method: Method, path: &str, body: Option<&Value>) -> Result<Value, Error> {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let response = send(method, path, bytes.as_deref())?;
    let status = response.status();
    let body = read_all(response)?;
    if !(200..300).contains(&status) {
        return Err(refusal(status, &body, None));
    }
    serde_json::from_slice(&body).map_err(|e| Error::Internal(format!("the upstream's answer is not JSON: {e}")))
}

pub fn get_json(path: &str) -> Result<Value, Error> {
    json_of(Method::Get, path, None)
}

pub fn post_json(path: &str, body: &Value) -> Result<Value, Error> {
    json_of(Method::Post, path, Some(body))
}

/// A streamed answer; a refusal (non-2xx) is read whole and returned as an
/// error.
pub fn open_stream(path: &str, body: &Value) -> Result<Stream, Error> {
    let response = send(Method::Post, path, Some(body.to_string().as_bytes()))?;
    let status = response.status();
    if !(200..300).contains(&status) {
        let text = read_all(response)?;
        return Err(refusal(status, &text, body["model"].as_str()));
    }
    Stream::of(response)
}

/// An upstream body being read. Fields drop in order: the stream before
/// its body, the body before its response.
pub struct Stream {
    stream: InputStream,
    _body: IncomingBody,
    _response: IncomingResponse,
}

impl Stream {
    fn of(response: IncomingResponse) -> Result<Self, Error> {
        let body = response.consume().map_err(|()| Error::Internal("the upstream's body was taken".into()))?;
        let stream = body.stream().map_err(|()| Error::Internal("the upstream's body stream was taken".into()))?;
        Ok(Stream { stream, _body: body, _response: response })
    }

    /// Ready when bytes can be read or the body has ended.
    pub fn subscribe(&self) -> Pollable {
        self.stream.subscribe()
    }

    /// The bytes there are now (possibly none); none once the body ended.
    pub fn read(&mut self) -> Result<Option<Vec<u8>>, Error> {
        match self.stream.read(READ_CHUNK_BYTES) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StreamError::Closed) => Ok(None),
            Err(StreamError::LastOperationFailed(e)) => {
                Err(Error::Unavailable(format!("the upstream's answer broke off: {}", e.to_debug_string())))
            }
        }
    }
}

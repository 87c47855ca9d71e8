//! The `wasi:http/incoming-handler` export: reads the request into a plain
//! [`Request`], routes it with the engine client over the host's imports
//! ([`HostEngine`]), and writes the [`Response`]. With `host.rs`, the only
//! code that knows it runs in wasm.

use crate::app_host::HostPlatform;
use crate::bindings;
use crate::bindings::exports::wasi::http::incoming_handler::Guest;
use crate::bindings::wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use crate::bindings::wasi::io::streams::{OutputStream, StreamError};
use crate::body_limit::{append_body_chunk, body_limit, check_declared_length};
use crate::error::ApiError;
use crate::host::HostEngine;
use crate::http::{Body, Request, Response};
use crate::router::{refuse, route_with_platform};

/// Most bytes one `blocking-write-and-flush` may carry (wasi:io's limit).
const WRITE_CHUNK_BYTES: usize = 4096;
/// Bytes asked for per body read.
const READ_CHUNK_BYTES: u64 = 64 * 1024;

struct Handler;

impl Guest for Handler {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let response = match read_request(&request) {
            Ok(req) => route_with_platform(&req, &HostEngine, &HostPlatform),
            Err(err) => refuse(&err),
        };
        drop(request);
        send(response, response_out);
    }
}

bindings::export!(Handler with_types_in bindings);

/// The request as plain values, its body read up to
/// [`MAX_BODY_BYTES`](crate::http::MAX_BODY_BYTES).
fn read_request(request: &IncomingRequest) -> Result<Request, ApiError> {
    let method = match request.method() {
        Method::Get => "GET".to_string(),
        Method::Head => "HEAD".to_string(),
        Method::Post => "POST".to_string(),
        Method::Put => "PUT".to_string(),
        Method::Delete => "DELETE".to_string(),
        Method::Connect => "CONNECT".to_string(),
        Method::Options => "OPTIONS".to_string(),
        Method::Trace => "TRACE".to_string(),
        Method::Patch => "PATCH".to_string(),
        Method::Other(other) => other,
    };
    let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
    let mut req = Request::new(&method, &path_with_query);
    req.headers = request
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(&value).into_owned()))
        .collect();

    let max_upload = crate::app_host::setting("max_upload_bytes").and_then(|s| s.parse().ok());
    let limit = body_limit(&req.path, max_upload);
    check_declared_length(req.header("content-length"), limit)?;
    // A declared length is allocated once: growing by doubling would hold
    // two copies of a large upload at the peak.
    if let Some(len) = req.header("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        req.body.reserve_exact(len);
    }
    let body = request.consume().map_err(|()| ApiError::UnreadableBody)?;
    let stream = body.stream().map_err(|()| ApiError::UnreadableBody)?;
    loop {
        match stream.blocking_read(READ_CHUNK_BYTES) {
            Ok(chunk) => append_body_chunk(&mut req.body, &chunk, limit)?,
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return Err(ApiError::UnreadableBody),
        }
    }
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok(req)
}

/// Writes `response`; a streamed body is pulled and written piece by piece,
/// and dropped at the first failed write so its generation is cancelled.
fn send(response: Response, response_out: ResponseOutparam) {
    let headers = Fields::new();
    for (name, value) in &response.headers {
        // Every header the router sets is valid; skipping is only defence.
        let _ = headers.append(name, value.as_bytes());
    }
    // 204 and 304 have no body, and must not state a length of one.
    if let (Body::Full(bytes) | Body::Then(bytes, _), false) = (&response.body, matches!(response.status, 204 | 304)) {
        let _ = headers.append("content-length", bytes.len().to_string().as_bytes());
    }
    let outgoing = OutgoingResponse::new(headers);
    let _ = outgoing.set_status_code(response.status);
    let Ok(body) = outgoing.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(outgoing));
    let Ok(stream) = body.write() else {
        return;
    };

    let mut then = None;
    let written = match response.body {
        Body::Full(bytes) => write_all(&stream, &bytes),
        Body::Then(bytes, work) => {
            then = Some(work);
            write_all(&stream, &bytes)
        }
        Body::Stream(mut pieces) => loop {
            let Some(piece) = pieces.next() else {
                break Ok(());
            };
            if let Err(gone) = write_all(&stream, &piece) {
                // The client is gone: cancel the generation now, not when
                // the instance is torn down.
                drop(pieces);
                break Err(gone);
            }
        },
    };
    drop(stream);
    if written.is_ok() {
        let _ = OutgoingBody::finish(body, None);
    }
    // The response is complete; the work goes on whether or not it arrived.
    if let Some(work) = then {
        work();
    }
}

fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), StreamError> {
    for piece in bytes.chunks(WRITE_CHUNK_BYTES) {
        stream.blocking_write_and_flush(piece)?;
    }
    Ok(())
}

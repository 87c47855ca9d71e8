//! The `wasi:http/incoming-handler` export: converts between wasi:http
//! resources and the router's plain values, and implements [`Backend`] over
//! the host's `tern:llm/inference` imports.

use crate::bindings;
use crate::bindings::exports::wasi::http::incoming_handler::Guest;
use crate::bindings::tern::llm::inference::{self, Generation, Pollable};
use crate::bindings::tern::llm::store_usage;
use crate::bindings::wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use crate::bindings::wasi::io::streams::{OutputStream, StreamError};
use crate::bindings::wasi::keyvalue;
use crate::http;
use crate::{
    refuse, route, ApiError, Backend, Body, BucketUsage, Embedding, EngineStatus, Error, Event, GenerationStream,
    JobInfo, Message, ModelInfo, Prompt, Request, Response, SamplingParams, Store,
};

/// Most bytes one `blocking-write-and-flush` may carry (wasi:io's limit).
const WRITE_CHUNK_BYTES: usize = 4096;
/// Bytes asked for per body read.
const READ_CHUNK_BYTES: u64 = 64 * 1024;

struct Handler;

impl Guest for Handler {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let response = match read_request(&request) {
            Ok(req) => route(&req, &HostBackend),
            Err(err) => refuse(&err),
        };
        drop(request);
        send(response, response_out);
    }
}

bindings::export!(Handler with_types_in bindings);

/// [`Backend`] over the host's `tern:llm/inference` imports.
struct HostBackend;

impl Backend for HostBackend {
    fn list_models(&self) -> Vec<ModelInfo> {
        inference::list_models()
    }

    fn status(&self) -> EngineStatus {
        inference::status()
    }

    fn generate(
        &self,
        model: &str,
        prompt: &Prompt,
        params: &SamplingParams,
    ) -> Result<Box<dyn GenerationStream>, Error> {
        let generation = inference::generate(model, prompt, params)?;
        Ok(Box::new(HostGeneration { ready: generation.subscribe(), generation }))
    }

    fn submit_job(&self, model: &str, prompt: &Prompt, params: &SamplingParams) -> Result<String, Error> {
        inference::submit_job(model, prompt, params)
    }

    fn job_status(&self, id: &str) -> Option<JobInfo> {
        inference::job_status(id)
    }

    fn cancel_job(&self, id: &str) -> Option<JobInfo> {
        inference::cancel_job(id)
    }

    fn tokenize(&self, model: &str, text: &str) -> Result<Vec<u32>, Error> {
        inference::tokenize(model, text)
    }

    fn detokenize(&self, model: &str, tokens: &[u32]) -> Result<String, Error> {
        inference::detokenize(model, tokens)
    }

    fn render_chat(&self, model: &str, messages: &[Message]) -> Result<String, Error> {
        inference::render_chat(model, messages)
    }

    fn embed(&self, model: &str, inputs: &[String]) -> Result<Vec<Embedding>, Error> {
        inference::embed(model, inputs)
    }

    fn store(&self) -> &dyn Store {
        &HostStore
    }
}

/// [`Store`] over the host's `wasi:keyvalue` imports. Buckets are opened per
/// call: an instance lives for one request and touches few keys.
struct HostStore;

impl HostStore {
    fn open(bucket: &str) -> Option<keyvalue::store::Bucket> {
        keyvalue::store::open(bucket).ok()
    }
}

impl Store for HostStore {
    fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        Self::open(bucket)?.get(key).ok().flatten()
    }

    fn set(&self, bucket: &str, key: &str, value: &[u8]) -> Result<(), String> {
        let b = Self::open(bucket).ok_or_else(|| format!("the store has no bucket {bucket}"))?;
        b.set(key, value).map_err(|e| format!("{e:?}"))
    }

    fn delete(&self, bucket: &str, key: &str) {
        if let Some(b) = Self::open(bucket) {
            let _ = b.delete(key);
        }
    }

    fn keys(&self, bucket: &str) -> Vec<String> {
        let Some(b) = Self::open(bucket) else { return Vec::new() };
        let mut keys = Vec::new();
        let mut cursor = None;
        while let Ok(page) = b.list_keys(cursor) {
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        keys
    }

    fn increment(&self, bucket: &str, key: &str, delta: u64) -> u64 {
        Self::open(bucket).and_then(|b| keyvalue::atomics::increment(&b, key, delta).ok()).unwrap_or(0)
    }

    fn usage(&self, bucket: &str) -> Option<BucketUsage> {
        store_usage::usage(bucket)
    }

    fn share(&self) -> Box<dyn Store> {
        Box::new(HostStore)
    }
}

/// A host generation read by blocking on its pollable.
struct HostGeneration {
    // Declared first so it drops first: a pollable must not outlive the
    // resource it watches.
    ready: Pollable,
    generation: Generation,
}

impl GenerationStream for HostGeneration {
    fn next_event(&mut self) -> Result<Event, Error> {
        loop {
            match self.generation.next()? {
                Event::Pending => self.ready.block(),
                event => return Ok(event),
            }
        }
    }
}

/// The request as plain values, its body read up to [`MAX_BODY_BYTES`].
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

    http::check_declared_length(req.header("content-length"))?;
    let body = request.consume().map_err(|()| ApiError::UnreadableBody)?;
    let stream = body.stream().map_err(|()| ApiError::UnreadableBody)?;
    loop {
        match stream.blocking_read(READ_CHUNK_BYTES) {
            Ok(chunk) => http::append_body_chunk(&mut req.body, &chunk)?,
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
    if let (Body::Full(bytes), false) = (&response.body, matches!(response.status, 204 | 304)) {
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

    let written = match response.body {
        Body::Full(bytes) => write_all(&stream, &bytes),
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
}

fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), StreamError> {
    for piece in bytes.chunks(WRITE_CHUNK_BYTES) {
        stream.blocking_write_and_flush(piece)?;
    }
    Ok(())
}

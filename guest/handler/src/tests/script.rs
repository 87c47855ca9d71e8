//! The scripted engine client the router's tests drive, and helpers to read its
//! responses.
//!
//! The scripted generation only replays events so that framing and
//! validation can be checked; the real engine is exercised end to end by the
//! workspace's HTTP tests.

pub(crate) use std::cell::RefCell;
pub(crate) use std::rc::Rc;

pub(crate) use serde_json::{json, Value};

pub(crate) use crate::bindings::tern::llm::inference::TopLogprob;
pub(crate) use crate::body_limit;
pub(crate) use crate::engine_client::{
    BucketUsage, ContextOverflow, Embedding, EngineClient, EngineStatus, Error, Event, FinishReason, Finished,
    GenerationStream, Histogram, JobInfo, JobState, Message, ModelInfo, Priority, Prompt, QueuePlace, SamplingParams,
    Store, TokenLogprob, Usage,
};
pub(crate) use crate::error::{error_response, ApiError};
pub(crate) use crate::http::{Body, Request, Response, MAX_BODY_BYTES};
pub(crate) use crate::router::{refuse, route};
pub(crate) use crate::wire::HANDLER_VERSION;

pub(crate) const MODEL: &str = "bitnet-test";

/// What a scripted generation was started with.
pub(crate) struct Started {
    pub(crate) model: String,
    pub(crate) prompt: Prompt,
    pub(crate) params: SamplingParams,
}

pub(crate) struct Script {
    pub(crate) ready: bool,
    /// Events the generation replays, in order; `Finished` repeats at the end.
    pub(crate) events: Vec<Result<Event, Error>>,
    /// Returned by `generate` and `submit-job` instead of starting work, once
    /// `refuse_after` starts have succeeded.
    pub(crate) refuse_with: Option<Error>,
    pub(crate) refuse_after: usize,
    pub(crate) started: RefCell<Option<Started>>,
    /// Set when the generation is dropped (cancelled, in the real host).
    pub(crate) dropped: Rc<RefCell<bool>>,
    /// What happened to generations, in order: `start`, `read`, `drop`.
    pub(crate) log: Rc<RefCell<Vec<&'static str>>>,
    /// The key-value store requests share.
    pub(crate) store: MemStore,
}

impl Script {
    pub(crate) fn new(events: Vec<Result<Event, Error>>) -> Self {
        Script {
            ready: true,
            events,
            refuse_with: None,
            refuse_after: 0,
            started: RefCell::new(None),
            dropped: Rc::new(RefCell::new(false)),
            log: Rc::new(RefCell::new(Vec::new())),
            store: MemStore::default(),
        }
    }

    /// Refuses with `error` once `starts` generations have started.
    pub(crate) fn refusing_after(starts: usize, error: Error) -> Self {
        let mut script = Script::saying(&["x"], FinishReason::Stop);
        script.refuse_with = Some(error);
        script.refuse_after = starts;
        script
    }

    /// Starts so far, and the refusal if it is due now.
    pub(crate) fn admit(&self) -> Result<(), Error> {
        let starts = self.log.borrow().iter().filter(|&&e| e == "start").count();
        match &self.refuse_with {
            Some(error) if starts >= self.refuse_after => Err(error.clone()),
            _ => Ok(()),
        }
    }

    pub(crate) fn log(&self) -> Vec<&'static str> {
        self.log.borrow().clone()
    }

    /// A generation that says `pieces` and then stops for `reason`.
    pub(crate) fn saying(pieces: &[&str], reason: FinishReason) -> Self {
        let mut events: Vec<_> = pieces.iter().map(|p| Ok(Event::Text(p.to_string()))).collect();
        events.push(Ok(Event::Finished(Finished { reason, usage: usage(7, pieces.len() as u32) })));
        Script::new(events)
    }

    pub(crate) fn refusing(error: Error) -> Self {
        let mut script = Script::new(Vec::new());
        script.refuse_with = Some(error);
        script
    }

    pub(crate) fn started(&self) -> Started {
        self.started.borrow_mut().take().expect("generate was called")
    }
}

pub(crate) fn job(id: &str, state: JobState) -> JobInfo {
    JobInfo {
        id: id.into(),
        model: MODEL.into(),
        state,
        text: "Once upon".into(),
        prompt_tokens: 7,
        created_at_ms: 1_700_000_000_500,
    }
}

pub(crate) trait WithText {
    fn with_text(self, text: String) -> Self;
}

impl WithText for JobInfo {
    fn with_text(mut self, text: String) -> Self {
        self.text = text;
        self
    }
}

pub(crate) fn usage(prompt_tokens: u32, completion_tokens: u32) -> Usage {
    Usage { prompt_tokens, completion_tokens, cached_tokens: 3, queue_ms: 1.0, prompt_ms: 4.0, generation_ms: 15.0 }
}

impl EngineClient for Script {
    fn list_models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: MODEL.into(),
            architecture: "bitnet-b1.58".into(),
            parameter_count: 2_400_000_000,
            context_length: 4096,
            quantization: "TQ2_0".into(),
            size_bytes: 1_100_000_000,
            modified_at: 1_700_000_000,
            device: "cpu avx2".into(),
            device_memory_bytes: 0,
        }]
    }

    fn status(&self) -> EngineStatus {
        let latency = Histogram { bounds: vec![0.1, 1.0], counts: vec![2, 1, 1], sum: 3.5, count: 4 };
        EngineStatus {
            ready: self.ready,
            running: 1,
            waiting: 2,
            max_waiting: 64,
            prompt_tokens_total: 100,
            generated_tokens_total: 50,
            requests_total: 4,
            cancelled_total: 1,
            rejected_total: 0,
            preempted_total: 0,
            kv_block_tokens: 16,
            kv_blocks_total: 200,
            kv_blocks_used: 50,
            kv_blocks_cached: 10,
            prefix_hits_total: 1,
            cached_tokens_total: 32,
            steps_total: 40,
            time_to_first_token: latency.clone(),
            inter_token_latency: latency.clone(),
            queue_time: latency.clone(),
            request_latency: latency,
            uptime_ms: 12_500,
            rss_bytes: 300 << 20,
        }
    }

    fn submit_job(&self, model: &str, prompt: &Prompt, params: &SamplingParams) -> Result<String, Error> {
        self.admit()?;
        if model != MODEL {
            return Err(Error::UnknownModel(model.to_string()));
        }
        *self.started.borrow_mut() =
            Some(Started { model: model.to_string(), prompt: prompt.clone(), params: params.clone() });
        Ok("job-1".into())
    }

    fn job_status(&self, id: &str) -> Option<JobInfo> {
        let state = match id {
            "job-1" => JobState::Queued(QueuePlace { position: 3, estimated_wait_ms: 1500 }),
            "job-running" => JobState::Running,
            "job-done" => JobState::Done(Finished { reason: FinishReason::Stop, usage: usage(7, 2) }),
            "job-failed" => JobState::Failed(Error::Internal("the engine fell over".into())),
            _ => return None,
        };
        Some(job(id, state))
    }

    fn cancel_job(&self, id: &str) -> Option<JobInfo> {
        self.job_status(id).map(|j| job(id, JobState::Cancelled).with_text(j.text))
    }

    fn tokenize(&self, model: &str, text: &str) -> Result<Vec<u32>, Error> {
        known(model)?;
        Ok(text.bytes().map(u32::from).collect())
    }

    fn detokenize(&self, model: &str, tokens: &[u32]) -> Result<String, Error> {
        known(model)?;
        let bytes: Result<Vec<u8>, _> = tokens.iter().map(|&t| u8::try_from(t)).collect();
        let bytes = bytes.map_err(|_| Error::InvalidRequest("token id outside the vocabulary".into()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn render_chat(&self, model: &str, messages: &[Message]) -> Result<String, Error> {
        known(model)?;
        Ok(messages.iter().map(|m| format!("<{}>{}", m.role, m.content)).collect::<String>() + "<assistant>")
    }

    fn embed(&self, model: &str, inputs: &[String]) -> Result<Vec<Embedding>, Error> {
        known(model)?;
        inputs
            .iter()
            .map(|text| {
                if text.is_empty() {
                    return Err(Error::InvalidRequest("an input is empty".into()));
                }
                // Unit length, and different for different lengths.
                let a = 1.0 / (1.0 + text.len() as f32);
                let b = (1.0 - a * a).sqrt();
                Ok(Embedding { vector: vec![a, b, 0.0, 0.0], tokens: text.len() as u32 + 1 })
            })
            .collect()
    }

    fn store(&self) -> &dyn Store {
        &self.store
    }

    fn generate(
        &self,
        model: &str,
        prompt: &Prompt,
        params: &SamplingParams,
    ) -> Result<Box<dyn GenerationStream>, Error> {
        self.admit()?;
        if model != MODEL {
            return Err(Error::UnknownModel(model.to_string()));
        }
        *self.started.borrow_mut() =
            Some(Started { model: model.to_string(), prompt: prompt.clone(), params: params.clone() });
        self.log.borrow_mut().push("start");
        Ok(Box::new(Replay {
            events: self.events.clone().into_iter().collect(),
            dropped: self.dropped.clone(),
            log: self.log.clone(),
        }))
    }
}

pub(crate) struct Replay {
    pub(crate) events: std::collections::VecDeque<Result<Event, Error>>,
    pub(crate) dropped: Rc<RefCell<bool>>,
    pub(crate) log: Rc<RefCell<Vec<&'static str>>>,
}

impl GenerationStream for Replay {
    fn next_event(&mut self) -> Result<Event, Error> {
        self.log.borrow_mut().push("read");
        match self.events.pop_front() {
            Some(Ok(Event::Finished(finished))) => {
                self.events.push_front(Ok(Event::Finished(finished)));
                Ok(Event::Finished(finished))
            }
            Some(event) => event,
            None => Err(Error::Internal("script ran out".into())),
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        *self.dropped.borrow_mut() = true;
        self.log.borrow_mut().push("drop");
    }
}

pub(crate) fn post(path: &str, body: &Value) -> Request {
    Request::new("POST", path).with_body(body.to_string())
}

pub(crate) fn chat(body: Value) -> Request {
    post("/v1/chat/completions", &body)
}

pub(crate) fn hello(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

pub(crate) fn json_of(response: Response) -> Value {
    match response.body {
        Body::Full(bytes) | Body::Then(bytes, _) => serde_json::from_slice(&bytes).expect("body is JSON"),
        Body::Stream(_) => panic!("expected a whole body"),
    }
}

pub(crate) fn frames(response: Response) -> Vec<String> {
    match response.body {
        Body::Stream(events) => events.map(|e| String::from_utf8(e).expect("UTF-8")).collect(),
        Body::Full(bytes) | Body::Then(bytes, _) => {
            panic!("expected a stream, got {}", String::from_utf8_lossy(&bytes))
        }
    }
}

pub(crate) fn frame_json(frame: &str) -> Value {
    let data = frame
        .strip_prefix("data: ")
        .and_then(|f| f.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not an SSE data frame: {frame:?}"));
    serde_json::from_str(data).expect("frame is JSON")
}

/// Asserts an OpenAI error with all four keys, returning the error object.
pub(crate) fn assert_openai_error(response: Response, status: u16) -> Value {
    assert_eq!(response.status, status);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = json_of(response);
    let error = body["error"].as_object().expect("an error object").clone();
    for key in ["message", "type", "param", "code"] {
        assert!(error.contains_key(key), "error lacks {key}: {body}");
    }
    assert!(error["message"].is_string());
    assert!(error["type"].is_string());
    assert!(error["param"].is_string() || error["param"].is_null());
    assert!(error["code"].is_string() || error["code"].is_null());
    Value::Object(error)
}

pub(crate) fn param_error(request: Request) -> Value {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let error = assert_openai_error(route(&request, &script), 400);
    assert_eq!(error["type"], "invalid_request_error");
    assert!(script.started.borrow().is_none(), "invalid requests never reach the engine");
    error
}

pub(crate) fn known(model: &str) -> Result<(), Error> {
    if model == MODEL {
        Ok(())
    } else {
        Err(Error::UnknownModel(model.to_string()))
    }
}

/// Values by (bucket, key).
type Buckets = std::collections::BTreeMap<(String, String), Vec<u8>>;

/// An in-memory [`Store`] that never evicts; its clones share the data.
#[derive(Default, Clone)]
pub(crate) struct MemStore {
    pub(crate) data: Rc<RefCell<Buckets>>,
}

impl Store for MemStore {
    fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.data.borrow().get(&(bucket.to_string(), key.to_string())).cloned()
    }

    fn set(&self, bucket: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.data.borrow_mut().insert((bucket.to_string(), key.to_string()), value.to_vec());
        Ok(())
    }

    fn delete(&self, bucket: &str, key: &str) {
        self.data.borrow_mut().remove(&(bucket.to_string(), key.to_string()));
    }

    fn keys(&self, bucket: &str) -> Vec<String> {
        self.data.borrow().keys().filter(|(b, _)| b == bucket).map(|(_, k)| k.clone()).collect()
    }

    fn increment(&self, bucket: &str, key: &str, delta: u64) -> u64 {
        let mut data = self.data.borrow_mut();
        let slot = data.entry((bucket.to_string(), key.to_string())).or_insert_with(|| 0u64.to_le_bytes().to_vec());
        let next = u64::from_le_bytes(slot[..8].try_into().expect("a counter")) + delta;
        *slot = next.to_le_bytes().to_vec();
        next
    }

    fn usage(&self, bucket: &str) -> Option<BucketUsage> {
        let data = self.data.borrow();
        let mine: Vec<_> = data.iter().filter(|((b, _), _)| b == bucket).collect();
        Some(BucketUsage {
            entries: mine.len() as u64,
            bytes: mine.iter().map(|((_, k), v)| (k.len() + v.len()) as u64).sum(),
            max_bytes: 1 << 20,
            evictions: 0,
        })
    }

    fn share(&self) -> Box<dyn Store> {
        Box::new(self.clone())
    }
}

/// The id an anonymous client sees for the engine's job `engine_id`.
pub(crate) fn job_id(engine_id: &str) -> String {
    crate::routes::seed::client_job_id(engine_id, &Request::new("GET", "/"))
}

/// A generated token's log-probability (its id: its first byte) with the
/// given alternatives.
pub(crate) fn token(text: &str, logprob: f32, top: &[(&str, f32)]) -> TokenLogprob {
    let top = top
        .iter()
        .map(|(t, l)| TopLogprob { id: u32::from(t.as_bytes()[0]), bytes: t.as_bytes().to_vec(), logprob: *l })
        .collect();
    TokenLogprob { id: u32::from(text.as_bytes()[0]), bytes: text.as_bytes().to_vec(), logprob, top }
}

//! The engine: loaded models, admission, and the thread that runs generations.
//!
//! 1. [`Engine::start`] returns at once and loads the models on a thread of
//!    its own, so the server can answer `/health` with "loading" meanwhile.
//! 2. [`Engine::generate`] tokenizes and validates on the caller's thread
//!    (cheap), then hands the sequence to the scheduler thread and returns a
//!    [`Generation`] handle.
//! 3. The scheduler thread steps every running sequence in turn (a prompt
//!    chunk or one decoded token each), so one long prompt cannot stall the
//!    others, and it drops a sequence within one step of its handle being
//!    dropped or its deadline passing.
//! 4. A [`Generation`] is read without blocking ([`Generation::next`]) and
//!    waited on either from async code ([`Generation::ready`]) or a plain
//!    thread ([`Generation::wait`]).

use crate::gguf::GgufFile;
use crate::model::{Backend, KvCache, LoadOptions, Model};
use crate::sampler::{Sampler, SamplingParams};
use crate::tokenizer::{ChatMessage, Tokenizer, Utf8Stream};
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

/// Prompt tokens processed in one scheduler step of one sequence.
const PREFILL_CHUNK: usize = 64;

/// Errors a caller can act on; they map one to one onto the WIT `error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("model {0:?} not found")]
    UnknownModel(String),
    #[error("the prompt has {prompt_tokens} tokens but the context holds {context_length}")]
    ContextOverflow { prompt_tokens: u32, context_length: u32 },
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Internal(String),
}

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// GGUF model files to serve; each is known by its file stem.
    pub models: Vec<PathBuf>,
    /// A HF `tokenizer.json` to use instead of the one in the GGUF.
    pub tokenizer: Option<PathBuf>,
    /// Sequences decoded together; more wait in the queue.
    pub max_running: usize,
    /// Sequences that may wait; more are refused as overloaded.
    pub max_queue: usize,
    /// Deadline of a generation that names none.
    pub default_timeout: Option<Duration>,
    /// Convert dense output heads to Q8_0 at load ([`LoadOptions::q8_0_head`]).
    pub q8_0_head: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            tokenizer: None,
            max_running: 16,
            max_queue: 64,
            default_timeout: None,
            q8_0_head: false,
        }
    }
}

/// What clients see of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    pub architecture: String,
    pub parameter_count: u64,
    pub context_length: u32,
    pub quantization: String,
    pub size_bytes: u64,
    pub modified_at: u64,
}

/// A model with its tokenizer, ready to run.
pub struct LoadedModel {
    pub info: ModelInfo,
    pub backend: Box<dyn Backend>,
    pub tokenizer: Tokenizer,
}

impl LoadedModel {
    /// Loads a GGUF file (and optionally a separate tokenizer.json).
    pub fn load(path: &Path, tokenizer: Option<&Path>, options: LoadOptions) -> Result<Self, String> {
        let file = GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let model = Model::load_with(&file, options).map_err(|e| format!("{}: {e}", path.display()))?;
        let tokenizer = match tokenizer {
            Some(t) => Tokenizer::from_json_file(t),
            None => Tokenizer::from_gguf(&file),
        }
        .map_err(|e| format!("{}: tokenizer: {e}", path.display()))?;
        let id = file
            .get("general.name")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        let modified_at = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let c = model.config();
        let info = ModelInfo {
            id,
            architecture: c.architecture.clone(),
            parameter_count: model.parameter_count(),
            context_length: c.n_ctx as u32,
            quantization: model.ternary_type().name(),
            size_bytes: file.file_size(),
            modified_at,
        };
        Ok(Self { info, backend: Box::new(model), tokenizer })
    }
}

/// Readiness and load of the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStatus {
    pub ready: bool,
    /// Set when loading failed; the engine then never becomes ready.
    pub load_error: Option<String>,
    pub running: u32,
    pub waiting: u32,
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    pub cancelled_total: u64,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What a generation continues.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text; BOS is added if the model wants it; never parsed for control tokens.
    Text(String),
    /// A conversation rendered with the model's chat template.
    Chat(Vec<Message>),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
}

/// A request for a generation.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub model: String,
    pub prompt: Prompt,
    /// Most tokens to generate; 0 means until the context is full.
    pub max_tokens: u32,
    /// Seed `None` draws a fresh one.
    pub sampling: SamplingParams,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub timeout: Option<Duration>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
}

/// Counts and times of a generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
    pub queue_ms: f64,
    pub prompt_ms: f64,
    pub generation_ms: f64,
}

/// The last event of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    pub usage: Usage,
}

/// What [`Generation::next`] returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Pending,
    Text(String),
    Finished(Finished),
}

#[derive(Default)]
struct GenState {
    text: String,
    finished: Option<Finished>,
    error: Option<EngineError>,
    waker: Option<Waker>,
}

impl GenState {
    fn has_news(&self) -> bool {
        !self.text.is_empty() || self.finished.is_some() || self.error.is_some()
    }
}

/// The state a generation handle and the scheduler share.
#[derive(Default)]
struct GenShared {
    state: Mutex<GenState>,
    cond: Condvar,
    cancelled: AtomicBool,
}

impl GenShared {
    fn update(&self, f: impl FnOnce(&mut GenState)) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s);
            s.waker.take()
        };
        self.cond.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A running generation; dropping it cancels the work.
pub struct Generation {
    shared: Arc<GenShared>,
    prompt_tokens: u32,
}

impl Generation {
    /// Takes the text generated since the last call, or the end.
    pub fn next(&self) -> Result<Event, EngineError> {
        let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if !s.text.is_empty() {
            return Ok(Event::Text(std::mem::take(&mut s.text)));
        }
        if let Some(e) = &s.error {
            return Err(e.clone());
        }
        Ok(match &s.finished {
            Some(f) => Event::Finished(f.clone()),
            None => Event::Pending,
        })
    }

    /// Blocks the calling thread until [`Generation::next`] has news.
    pub fn wait(&self) {
        let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        while !s.has_news() {
            s = self.shared.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Resolves when [`Generation::next`] has news.
    pub fn ready(&self) -> impl Future<Output = ()> + Send + 'static {
        Ready(self.shared.clone())
    }

    /// Tokens in the prompt, known at admission.
    pub fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }

    /// Blocks until the end; returns all text and how it ended.
    pub fn collect(self) -> Result<(String, Finished), EngineError> {
        let mut text = String::new();
        loop {
            match self.next()? {
                Event::Pending => self.wait(),
                Event::Text(t) => text.push_str(&t),
                Event::Finished(f) => return Ok((text, f)),
            }
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.shared.cancelled.store(true, Ordering::Release);
    }
}

struct Ready(Arc<GenShared>);

impl Future for Ready {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.has_news() {
            Poll::Ready(())
        } else {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[derive(Default)]
struct Stats {
    running: AtomicU32,
    waiting: AtomicU32,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    cancelled: AtomicU64,
}

struct Inner {
    config: EngineConfig,
    models: RwLock<Vec<Arc<LoadedModel>>>,
    ready: AtomicBool,
    load_error: Mutex<Option<String>>,
    stats: Stats,
    jobs: Mutex<mpsc::Sender<Seq>>,
    seed_counter: AtomicU64,
}

/// The inference engine. Cheap to clone; all clones share one scheduler.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts loading `config.models` in the background and returns at once.
    pub fn start(config: EngineConfig) -> Self {
        let engine = Self::empty(config);
        let inner = engine.inner.clone();
        std::thread::Builder::new()
            .name("tern-load".into())
            .spawn(move || {
                let started = Instant::now();
                match load_all(&inner.config) {
                    Ok(models) => {
                        for m in &models {
                            tracing::info!(model = %m.info.id, architecture = %m.info.architecture,
                                quantization = %m.info.quantization, parameters = m.info.parameter_count,
                                context = m.info.context_length, "model loaded");
                        }
                        *inner.models.write().unwrap_or_else(|p| p.into_inner()) = models;
                        inner.ready.store(true, Ordering::Release);
                        tracing::info!(ms = started.elapsed().as_millis() as u64, "engine ready");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "model loading failed");
                        *inner.load_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                }
            })
            .expect("spawning the loader thread");
        engine
    }

    /// Loads `config.models` before returning.
    pub fn load(config: EngineConfig) -> Result<Self, EngineError> {
        let models = load_all(&config).map_err(EngineError::Internal)?;
        let engine = Self::empty(config);
        *engine.inner.models.write().unwrap_or_else(|p| p.into_inner()) = models;
        engine.inner.ready.store(true, Ordering::Release);
        Ok(engine)
    }

    fn empty(config: EngineConfig) -> Self {
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            config,
            models: RwLock::new(Vec::new()),
            ready: AtomicBool::new(false),
            load_error: Mutex::new(None),
            stats: Stats::default(),
            jobs: Mutex::new(tx),
            seed_counter: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("tern-scheduler".into())
            .spawn(move || Scheduler::new(weak, rx).run())
            .expect("spawning the scheduler thread");
        Self { inner }
    }

    /// Waits until the models are loaded (or loading failed).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), EngineError> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if s.ready {
                return Ok(());
            }
            if let Some(e) = s.load_error {
                return Err(EngineError::Internal(e));
            }
            if Instant::now() > deadline {
                return Err(EngineError::Overloaded("the model is still loading".into()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The models served.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.inner.models.read().unwrap_or_else(|p| p.into_inner()).iter().map(|m| m.info.clone()).collect()
    }

    /// A loaded model by id.
    pub fn model(&self, id: &str) -> Result<Arc<LoadedModel>, EngineError> {
        if !self.inner.ready.load(Ordering::Acquire) {
            return Err(EngineError::Overloaded("the model is still loading".into()));
        }
        let models = self.inner.models.read().unwrap_or_else(|p| p.into_inner());
        models.iter().find(|m| m.info.id == id).cloned().ok_or_else(|| EngineError::UnknownModel(id.to_string()))
    }

    /// Readiness and load.
    pub fn status(&self) -> EngineStatus {
        let s = &self.inner.stats;
        EngineStatus {
            ready: self.inner.ready.load(Ordering::Acquire),
            load_error: self.inner.load_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            running: s.running.load(Ordering::Relaxed),
            waiting: s.waiting.load(Ordering::Relaxed),
            prompt_tokens_total: s.prompt_tokens.load(Ordering::Relaxed),
            generated_tokens_total: s.generated_tokens.load(Ordering::Relaxed),
            cancelled_total: s.cancelled.load(Ordering::Relaxed),
        }
    }

    /// Token ids of plain text (no BOS).
    pub fn tokenize(&self, model: &str, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self.model(model)?.tokenizer.encode_text(text))
    }

    /// Text of token ids.
    pub fn detokenize(&self, model: &str, tokens: &[u32]) -> Result<String, EngineError> {
        let m = self.model(model)?;
        check_ids(&m, tokens)?;
        Ok(m.tokenizer.decode(tokens))
    }

    /// A conversation rendered with the model's template, with the assistant's turn prompt.
    pub fn render_chat(&self, model: &str, messages: &[Message]) -> Result<String, EngineError> {
        let m = self.model(model)?;
        m.tokenizer.render_chat(&chat_messages(messages), true).map_err(|e| EngineError::InvalidRequest(e.to_string()))
    }

    /// Validates a request and queues its generation.
    pub fn generate(&self, req: GenerateRequest) -> Result<Generation, EngineError> {
        let m = self.model(&req.model)?;
        req.sampling.validate().map_err(EngineError::InvalidRequest)?;
        let prompt = match &req.prompt {
            Prompt::Text(text) => {
                let mut ids: Vec<u32> = m.tokenizer.bos().filter(|_| m.tokenizer.add_bos()).into_iter().collect();
                ids.extend(m.tokenizer.encode_text(text));
                ids
            }
            Prompt::Chat(messages) => {
                if messages.is_empty() {
                    return Err(EngineError::InvalidRequest("messages must not be empty".into()));
                }
                m.tokenizer
                    .encode_chat(&chat_messages(messages), true)
                    .map_err(|e| EngineError::InvalidRequest(e.to_string()))?
            }
            Prompt::Tokens(ids) => {
                check_ids(&m, ids)?;
                ids.clone()
            }
        };
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let n_ctx = m.backend.config().n_ctx;
        if prompt.len() >= n_ctx {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: prompt.len() as u32,
                context_length: n_ctx as u32,
            });
        }
        let stats = &self.inner.stats;
        if stats.waiting.load(Ordering::Relaxed) as usize >= self.inner.config.max_queue {
            return Err(EngineError::Overloaded(format!(
                "{} requests are already waiting; try again shortly",
                self.inner.config.max_queue
            )));
        }
        let seed = req.seed.unwrap_or_else(|| fresh_seed(&self.inner.seed_counter));
        let shared = Arc::new(GenShared::default());
        let timeout = req.timeout.or(self.inner.config.default_timeout);
        let prompt_tokens = prompt.len() as u32;
        let seq = Seq {
            shared: shared.clone(),
            cache: KvCache::new(m.backend.config()),
            sampler: Sampler::new(SamplingParams { seed, ..req.sampling }),
            utf8: Utf8Stream::new(),
            stop: StopMatcher::new(req.stop),
            n_prompt: prompt.len(),
            tokens: prompt,
            max_tokens: req.max_tokens,
            generated: 0,
            deadline: timeout.map(|t| Instant::now() + t),
            admitted: Instant::now(),
            prompt_started: None,
            prompt_done: None,
            model: m,
        };
        stats.waiting.fetch_add(1, Ordering::Relaxed);
        let sent = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner()).send(seq);
        if sent.is_err() {
            stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Internal("the scheduler has stopped".into()));
        }
        Ok(Generation { shared, prompt_tokens })
    }
}

fn load_all(config: &EngineConfig) -> Result<Vec<Arc<LoadedModel>>, String> {
    if config.models.is_empty() {
        return Err("no model file given".into());
    }
    let options = LoadOptions { q8_0_head: config.q8_0_head };
    config.models.iter().map(|p| LoadedModel::load(p, config.tokenizer.as_deref(), options).map(Arc::new)).collect()
}

fn check_ids(m: &LoadedModel, ids: &[u32]) -> Result<(), EngineError> {
    let vocab = m.backend.config().n_vocab;
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(t) => Err(EngineError::InvalidRequest(format!("token id {t} is outside the vocabulary of {vocab}"))),
        None => Ok(()),
    }
}

fn chat_messages(messages: &[Message]) -> Vec<ChatMessage<'_>> {
    messages.iter().map(|m| ChatMessage { role: &m.role, content: &m.content }).collect()
}

fn fresh_seed(counter: &AtomicU64) -> u64 {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ counter.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Holds back generated text that might be the start of a stop string.
struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Adds text; returns what can be shown and whether a stop string appeared.
    fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail that could still grow into a stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// A sequence as the scheduler runs it.
struct Seq {
    shared: Arc<GenShared>,
    model: Arc<LoadedModel>,
    cache: KvCache,
    sampler: Sampler,
    utf8: Utf8Stream,
    stop: StopMatcher,
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    n_prompt: usize,
    max_tokens: u32,
    generated: u32,
    deadline: Option<Instant>,
    admitted: Instant,
    prompt_started: Option<Instant>,
    prompt_done: Option<Instant>,
}

impl Seq {
    fn usage(&self) -> Usage {
        let now = Instant::now();
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        let started = self.prompt_started.unwrap_or(now);
        let done = self.prompt_done.unwrap_or(now);
        Usage {
            prompt_tokens: self.n_prompt as u32,
            completion_tokens: self.generated,
            cached_tokens: 0,
            queue_ms: ms(self.admitted, started),
            prompt_ms: ms(started, done),
            generation_ms: ms(done, now),
        }
    }

    /// Ends the generation; `flush` releases text held back for UTF-8 or
    /// stop-string matching (not after a stop string, where it is cut off).
    fn finish(&mut self, reason: FinishReason, flush: bool) {
        let mut tail = String::new();
        if flush {
            let rest = self.utf8.flush();
            let (shown, _) = self.stop.push(&rest);
            tail = shown + &self.stop.flush();
        }
        let usage = self.usage();
        self.shared.update(|s| {
            s.text.push_str(&tail);
            s.finished = Some(Finished { reason, usage });
        });
    }

    /// Runs one step; returns false once the sequence is over.
    fn step(&mut self, stats: &Stats) -> bool {
        if self.shared.cancelled.load(Ordering::Acquire) {
            stats.cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(generated = self.generated, "generation cancelled");
            return false;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.finish(FinishReason::Cancelled, true);
            return false;
        }
        let backend = &self.model.backend;
        let done = self.cache.len();
        let logits = if done < self.n_prompt {
            self.prompt_started.get_or_insert_with(Instant::now);
            let end = (done + PREFILL_CHUNK).min(self.n_prompt);
            let logits = backend.forward(&mut self.cache, &self.tokens[done..end], false);
            stats.prompt_tokens.fetch_add((end - done) as u64, Ordering::Relaxed);
            if end < self.n_prompt {
                return true;
            }
            self.prompt_done = Some(Instant::now());
            logits
        } else {
            let last = self.tokens[self.tokens.len() - 1];
            backend.forward(&mut self.cache, &[last], false)
        };
        let token = self.sampler.sample(&logits, &self.tokens);
        let tok = &self.model.tokenizer;
        if tok.is_end(token) {
            self.finish(FinishReason::Stop, true);
            return false;
        }
        self.tokens.push(token);
        self.generated += 1;
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        if !tok.is_control(token) {
            let text = self.utf8.push(&tok.token_bytes(token));
            let (shown, stopped) = self.stop.push(&text);
            if !shown.is_empty() {
                self.shared.update(|s| s.text.push_str(&shown));
            }
            if stopped {
                self.finish(FinishReason::Stop, false);
                return false;
            }
        }
        let full = self.cache.len() + 1 >= backend.config().n_ctx;
        if full || (self.max_tokens > 0 && self.generated >= self.max_tokens) {
            self.finish(FinishReason::Length, true);
            return false;
        }
        true
    }
}

struct Scheduler {
    inner: std::sync::Weak<Inner>,
    jobs: mpsc::Receiver<Seq>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
}

impl Scheduler {
    fn new(inner: std::sync::Weak<Inner>, jobs: mpsc::Receiver<Seq>) -> Self {
        Self { inner, jobs, waiting: VecDeque::new(), running: Vec::new() }
    }

    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.jobs.recv() {
                    Ok(seq) => self.waiting.push_back(seq),
                    Err(_) => return, // every engine handle is gone
                }
            }
            while let Ok(seq) = self.jobs.try_recv() {
                self.waiting.push_back(seq);
            }
            let Some(inner) = self.inner.upgrade() else { return };
            let stats = &inner.stats;
            // Requests whose client left while queued never start.
            self.waiting.retain(|s| {
                let gone = s.shared.cancelled.load(Ordering::Acquire);
                if gone {
                    stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    stats.waiting.fetch_sub(1, Ordering::Relaxed);
                }
                !gone
            });
            while self.running.len() < inner.config.max_running.max(1) {
                let Some(seq) = self.waiting.pop_front() else { break };
                stats.waiting.fetch_sub(1, Ordering::Relaxed);
                self.running.push(seq);
            }
            stats.running.store(self.running.len() as u32, Ordering::Relaxed);
            self.running.retain_mut(|seq| seq.step(stats));
            stats.running.store(self.running.len() as u32, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_matcher_holds_back_possible_prefix_and_cuts_at_stop() {
        let mut m = StopMatcher::new(vec!["\nUser:".into()]);
        assert_eq!(m.push("Hello"), ("Hello".into(), false));
        assert_eq!(m.push(" there\nUs"), (" there".into(), false));
        assert_eq!(m.push("er: hi"), ("".into(), true));
    }

    #[test]
    fn stop_matcher_releases_text_that_stops_matching() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), ("".into(), false));
        assert_eq!(m.push("D?"), ("".into(), true));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), ("".into(), false));
        assert_eq!(m.push("ough"), ("ENough".into(), false));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_matcher_is_safe_with_multibyte_stops() {
        let mut m = StopMatcher::new(vec!["日本".into()]);
        assert_eq!(m.push("a日"), ("a".into(), false));
        assert_eq!(m.push("x"), ("日x".into(), false));
    }
}

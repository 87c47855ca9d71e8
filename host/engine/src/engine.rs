//! The engine: loaded models, admission, and the thread that runs generations.
//!
//! 1. [`Engine::start`] returns at once and loads the models on a thread of
//!    its own, so the server can answer `/health` with "loading" meanwhile.
//! 2. [`Engine::generate`] tokenizes and validates on the caller's thread
//!    (cheap), then hands the sequence to the scheduler thread and returns a
//!    [`Generation`] handle.
//! 3. The scheduler thread ([`crate::scheduler`]) runs every admitted
//!    sequence in one batched forward pass per step, with KV blocks from a
//!    shared pool and prefix reuse; it drops a sequence within one step of
//!    its handle being dropped or its deadline passing.
//! 4. A [`Generation`] is read without blocking ([`Generation::next`]) and
//!    waited on either from async code ([`Generation::ready`]) or a plain
//!    thread ([`Generation::wait`]).
//! 5. Detached jobs ([`Engine::submit_job`]) are generations the engine
//!    itself holds, so they outlive the request that started them; their
//!    state is read by id until they expire.

use crate::gguf::GgufFile;
use crate::kv::{KvPool, SeqKv, BLOCK_TOKENS};
use crate::model::{Backend, LoadOptions, Model};
use crate::sampler::{Sampler, SamplingParams};
use crate::scheduler::{Limits, Queue, Scheduler, Seq, Shared, StopMatcher};
use crate::stats::{Latencies, Stats};
use crate::tokenizer::{ChatMessage, Tokenizer, Utf8Stream};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

/// Finished jobs kept at most; the oldest go first.
const MAX_KEPT_JOBS: usize = 1024;

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
    /// Bytes of KV cache per model (at least one full context is kept).
    pub kv_memory: usize,
    /// Tokens one scheduler step runs: every decoding sequence's next token
    /// plus prompt chunks.
    pub step_tokens: usize,
    /// Most prompt tokens per step of a prompt that cannot finish within
    /// the step (one that fits the step's rest runs whole).
    pub prefill_chunk: usize,
    /// How long a finished job's result is kept.
    pub job_ttl: Duration,
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
            kv_memory: 2 << 30,
            step_tokens: 64,
            prefill_chunk: 16,
            job_ttl: Duration::from_secs(600),
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
    pub max_waiting: u32,
    /// Prompt tokens run through the model (cached ones excluded).
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    /// Generations finished for any reason.
    pub requests_total: u64,
    /// Generations whose client left or whose deadline passed.
    pub cancelled_total: u64,
    /// Generations refused because the queue was full.
    pub rejected_total: u64,
    /// Running generations sent back to the queue to free KV blocks.
    pub preempted_total: u64,
    pub kv_block_tokens: u32,
    pub kv_blocks_total: u32,
    /// Held by running generations.
    pub kv_blocks_used: u32,
    /// Held by nobody, kept for prefix reuse.
    pub kv_blocks_cached: u32,
    /// Generations that reused cached prefix blocks.
    pub prefix_hits_total: u64,
    /// Prompt tokens taken from the prefix cache.
    pub cached_tokens_total: u64,
    pub steps_total: u64,
    pub latencies: Latencies,
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
    pub priority: Priority,
}

/// Which queue a generation waits in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Someone reads it as it comes: starts before any batch work.
    #[default]
    Interactive,
    /// Nobody watches it token by token (`/batch`, queued jobs).
    Batch,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of turn or a stop string.
    Stop,
    /// `max_tokens` or the context.
    Length,
    /// Cancelled by its owner.
    Cancelled,
    /// Its deadline passed.
    Timeout,
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

/// One input's embedding (see [`Engine::embed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Unit-length mean of the final hidden states.
    pub vector: Vec<f32>,
    /// Tokens the input had.
    pub tokens: u32,
}

/// What [`Generation::next`] returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Pending,
    Text(String),
    Finished(Finished),
}

#[derive(Default)]
pub(crate) struct GenState {
    pub text: String,
    pub finished: Option<Finished>,
    pub error: Option<EngineError>,
    waker: Option<Waker>,
}

impl GenState {
    /// Adds generated text, unless the generation has already ended (e.g. a
    /// job cancelled while its last step ran): an ended text never changes.
    pub fn append(&mut self, text: &str) {
        if self.finished.is_none() && self.error.is_none() {
            self.text.push_str(text);
        }
    }

    fn has_news(&self) -> bool {
        !self.text.is_empty() || self.finished.is_some() || self.error.is_some()
    }
}

/// The state a generation handle and the scheduler share.
#[derive(Default)]
pub(crate) struct GenShared {
    pub state: Mutex<GenState>,
    cond: Condvar,
    pub cancelled: AtomicBool,
}

impl GenShared {
    pub fn update(&self, f: impl FnOnce(&mut GenState)) {
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

/// A generation the engine holds for a client that comes back by id.
struct Job {
    model: String,
    seq: u64,
    shared: Arc<GenShared>,
    prompt_tokens: u32,
    created: SystemTime,
    /// When it was first seen finished; it expires `job_ttl` later.
    ended: Option<Instant>,
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Queued { position: u32, estimated_wait: Duration },
    Running,
    Done(Finished),
    Cancelled,
    Failed(EngineError),
}

/// A job as [`Engine::job_status`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    pub id: String,
    pub model: String,
    pub state: JobState,
    /// Text so far (all of it once done).
    pub text: String,
    pub prompt_tokens: u32,
    pub created_at_ms: u64,
}

struct Inner {
    config: EngineConfig,
    models: RwLock<Vec<Arc<LoadedModel>>>,
    ready: AtomicBool,
    load_error: Mutex<Option<String>>,
    shared: Arc<Shared>,
    jobs: Mutex<HashMap<String, Job>>,
    seed_counter: AtomicU64,
    seq_counter: AtomicU64,
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
        let shared =
            Arc::new(Shared { queue: Mutex::new(Queue::default()), wake: Condvar::new(), stats: Stats::default() });
        let limits = Limits {
            max_running: config.max_running,
            step_tokens: config.step_tokens,
            prefill_chunk: config.prefill_chunk,
            kv_memory: config.kv_memory,
        };
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("tern-scheduler".into())
            .spawn(move || Scheduler::new(weak, limits).run())
            .expect("spawning the scheduler thread");
        let inner = Arc::new(Inner {
            config,
            models: RwLock::new(Vec::new()),
            ready: AtomicBool::new(false),
            load_error: Mutex::new(None),
            shared,
            jobs: Mutex::new(HashMap::new()),
            seed_counter: AtomicU64::new(0),
            seq_counter: AtomicU64::new(1),
        });
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
        let s = &self.inner.shared.stats;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let k = |c: &std::sync::atomic::AtomicU32| c.load(Ordering::Relaxed);
        EngineStatus {
            ready: self.inner.ready.load(Ordering::Acquire),
            load_error: self.inner.load_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            running: k(&s.running),
            waiting: k(&s.waiting),
            max_waiting: self.inner.config.max_queue as u32,
            prompt_tokens_total: n(&s.prompt_tokens),
            generated_tokens_total: n(&s.generated_tokens),
            requests_total: n(&s.requests),
            cancelled_total: n(&s.cancelled),
            rejected_total: n(&s.rejected),
            preempted_total: n(&s.preempted),
            kv_block_tokens: BLOCK_TOKENS as u32,
            kv_blocks_total: k(&s.kv_total),
            kv_blocks_used: k(&s.kv_used),
            kv_blocks_cached: k(&s.kv_cached),
            prefix_hits_total: n(&s.prefix_hits),
            cached_tokens_total: n(&s.cached_tokens),
            steps_total: n(&s.steps),
            latencies: s.latencies.lock().unwrap_or_else(|p| p.into_inner()).clone(),
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

    /// Embeddings of `inputs`: the mean of each input's output-normed final
    /// hidden states (BOS included when the model asks for one), scaled to
    /// unit length. Runs on the calling thread, beside the scheduler.
    pub fn embed(&self, model: &str, inputs: &[String]) -> Result<Vec<Embedding>, EngineError> {
        let m = self.model(model)?;
        let config = m.backend.config();
        let (d, context) = (config.n_embd, config.n_ctx);
        let mut batches = Vec::with_capacity(inputs.len());
        for (i, text) in inputs.iter().enumerate() {
            let mut ids: Vec<u32> = m.tokenizer.bos().filter(|_| m.tokenizer.add_bos()).into_iter().collect();
            ids.extend(m.tokenizer.encode_text(text));
            if text.is_empty() {
                return Err(EngineError::InvalidRequest(format!("input {i} is empty")));
            }
            if ids.len() > context {
                return Err(EngineError::InvalidRequest(format!(
                    "input {i} has {} tokens, more than the context of {context}",
                    ids.len()
                )));
            }
            batches.push(ids);
        }
        Ok(batches
            .iter()
            .map(|ids| {
                let hidden = m.backend.hidden_states(ids);
                let mut mean = vec![0f64; d];
                for row in hidden.chunks_exact(d) {
                    mean.iter_mut().zip(row).for_each(|(m, &h)| *m += f64::from(h));
                }
                let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
                let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                Embedding { vector: mean.iter().map(|v| (v * scale) as f32).collect(), tokens: ids.len() as u32 }
            })
            .collect())
    }

    /// Validates a request and queues its generation.
    pub fn generate(&self, req: GenerateRequest) -> Result<Generation, EngineError> {
        let (shared, _, prompt_tokens) = self.enqueue(req)?;
        Ok(Generation { shared, prompt_tokens })
    }

    /// Queues a generation the engine holds itself; returns its job id.
    pub fn submit_job(&self, req: GenerateRequest) -> Result<String, EngineError> {
        let model = req.model.clone();
        let (shared, seq, prompt_tokens) = self.enqueue(req)?;
        let id = format!("job-{seq:x}{:04x}", fresh_seed(&self.inner.seed_counter) & 0xffff);
        let mut jobs = self.jobs();
        expire_jobs(&mut jobs, self.inner.config.job_ttl);
        jobs.insert(id.clone(), Job { model, seq, shared, prompt_tokens, created: SystemTime::now(), ended: None });
        Ok(id)
    }

    /// A job's state and text; `None` if the id is unknown or expired.
    pub fn job_status(&self, id: &str) -> Option<JobInfo> {
        let mut jobs = self.jobs();
        expire_jobs(&mut jobs, self.inner.config.job_ttl);
        let job = jobs.get_mut(id)?;
        Some(self.job_info(id, job))
    }

    /// Cancels a job that has not finished; returns its state after.
    pub fn cancel_job(&self, id: &str) -> Option<JobInfo> {
        let mut jobs = self.jobs();
        let job = jobs.get_mut(id)?;
        job.shared.cancelled.store(true, Ordering::Release);
        job.shared.update(|s| {
            if s.finished.is_none() && s.error.is_none() {
                let usage = Usage { prompt_tokens: job.prompt_tokens, ..Usage::default() };
                s.finished = Some(Finished { reason: FinishReason::Cancelled, usage });
            }
        });
        self.inner.shared.wake.notify_all();
        Some(self.job_info(id, job))
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn job_info(&self, id: &str, job: &mut Job) -> JobInfo {
        let (state, text) = {
            let s = job.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let state = match (&s.error, &s.finished) {
                (Some(e), _) => JobState::Failed(e.clone()),
                (None, Some(f)) if f.reason == FinishReason::Cancelled => JobState::Cancelled,
                (None, Some(f)) => JobState::Done(f.clone()),
                (None, None) => {
                    let position = self.inner.shared.queue.lock().unwrap_or_else(|p| p.into_inner()).position(job.seq);
                    match position {
                        Some(position) => {
                            JobState::Queued { position: position as u32, estimated_wait: self.estimate_wait(position) }
                        }
                        None => JobState::Running,
                    }
                }
            };
            (state, s.text.clone())
        };
        if !matches!(state, JobState::Queued { .. } | JobState::Running) {
            job.ended.get_or_insert_with(Instant::now);
        }
        let created_at_ms = job.created.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        JobInfo {
            id: id.to_string(),
            model: job.model.clone(),
            state,
            text,
            prompt_tokens: job.prompt_tokens,
            created_at_ms,
        }
    }

    /// Time until the generation `position` places back in the queue starts:
    /// the slots ahead of it turn over once per average generation time.
    fn estimate_wait(&self, position: usize) -> Duration {
        let service = Duration::from_micros(self.inner.shared.stats.service_us.load(Ordering::Relaxed));
        let rounds = (position / self.inner.config.max_running.max(1) + 1) as u32;
        service * rounds
    }

    /// Validates a request and puts its sequence in the queue; returns its
    /// shared state, sequence id and prompt length.
    fn enqueue(&self, req: GenerateRequest) -> Result<(Arc<GenShared>, u64, u32), EngineError> {
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
        let seed = req.seed.unwrap_or_else(|| fresh_seed(&self.inner.seed_counter));
        let shared = Arc::new(GenShared::default());
        let timeout = req.timeout.or(self.inner.config.default_timeout);
        let prompt_tokens = prompt.len() as u32;
        let id = self.inner.seq_counter.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let seq = Seq {
            id,
            shared: shared.clone(),
            model: m,
            priority: req.priority,
            sampler: Sampler::new(SamplingParams { seed, ..req.sampling }),
            utf8: Utf8Stream::new(),
            stop: StopMatcher::new(req.stop),
            n_prompt: prompt.len(),
            tokens: prompt,
            max_tokens: req.max_tokens,
            generated: 0,
            deadline: timeout.map(|t| now + t),
            admitted: now,
            kv: SeqKv::default(),
            computed: 0,
            cached_tokens: None,
            started: None,
            prompt_done: None,
            last_token: None,
            passed_over: 0,
        };
        let engine = &self.inner.shared;
        let mut queue = engine.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &queue.closed {
            return Err(e.clone());
        }
        if queue.len() >= self.inner.config.max_queue {
            Stats::add(&engine.stats.rejected, 1);
            return Err(EngineError::Overloaded(format!(
                "{} requests are already waiting; try again shortly",
                self.inner.config.max_queue
            )));
        }
        queue.push_back(seq);
        engine.stats.waiting.store(queue.len() as u32, Ordering::Relaxed);
        drop(queue);
        engine.wake.notify_all();
        Ok((shared, id, prompt_tokens))
    }

    /// Ends every running and queued generation with `error` (within one
    /// step) and refuses new ones with it: for shutting down once the
    /// grace period is over, so that each client gets a final error rather
    /// than a cut connection.
    pub fn abort_all(&self, error: EngineError) {
        let engine = &self.inner.shared;
        engine.queue.lock().unwrap_or_else(|p| p.into_inner()).closed = Some(error);
        engine.wake.notify_all();
    }

    /// Bytes of KV cache one position of `model` takes.
    pub fn kv_bytes_per_token(&self, model: &str) -> Result<usize, EngineError> {
        let c = self.model(model)?.backend.config().clone();
        Ok(KvPool::block_bytes(c.n_layer, c.kv_dim()) / BLOCK_TOKENS)
    }
}

/// Forgets finished jobs older than `ttl`, and the oldest finished ones
/// beyond [`MAX_KEPT_JOBS`].
fn expire_jobs(jobs: &mut HashMap<String, Job>, ttl: Duration) {
    for job in jobs.values_mut() {
        let s = job.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.finished.is_some() || s.error.is_some() {
            job.ended.get_or_insert_with(Instant::now);
        }
    }
    jobs.retain(|_, j| j.ended.is_none_or(|t| t.elapsed() < ttl));
    let mut ended: Vec<(Instant, String)> =
        jobs.iter().filter_map(|(id, j)| j.ended.map(|t| (t, id.clone()))).collect();
    if ended.len() > MAX_KEPT_JOBS {
        ended.sort();
        for (_, id) in &ended[..ended.len() - MAX_KEPT_JOBS] {
            jobs.remove(id);
        }
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

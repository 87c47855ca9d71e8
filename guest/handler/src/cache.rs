//! The response cache: whole answers kept in the host's `wasi:keyvalue`
//! store and replayed for identical requests without the engine.
//!
//! How it fits:
//! 1. A chat route parses its request and asks [`look_up`], which decides
//!    whether the request may be cached at all (deterministic sampling, or
//!    an explicit `use_cache: true`; `use_cache: false` always bypasses).
//! 2. The key is a SHA-256 of the route family, the model, the prompt as the
//!    model's chat template renders it, every sampling parameter and the
//!    caller's [`identity`], so neither two prompts nor two tenants share
//!    an answer.
//! 3. A hit becomes a [`GenerationStream`] replaying the stored text and
//!    finish, so the route frames it exactly like a fresh answer. A miss
//!    wraps the engine's generation to record it; the answer is stored only
//!    once the client has received all of it ([`StoreAtEnd`] for streams)
//!    and only if it ended with `stop` or `length`.
//!
//! Policy lives here; the host's store only keeps bytes under `--cache-mib`
//! and evicts the least recently used. Counters go to a bucket of their own
//! so the responses bucket's usage counts answers alone.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::engine_client::{
    BucketUsage, Constraint, EngineClient, Error, Event, FinishReason, Finished, GenerationStream, Message,
    SamplingParams, Store, Usage,
};
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::wire::finish_reason;

/// Bucket holding cached answers.
pub const RESPONSES: &str = "responses";
/// Bucket holding the handler's counters (cache outcomes, error responses).
pub const COUNTERS: &str = "counters";
/// Seconds an answer stays valid unless the host sets `TERN_CACHE_TTL`.
pub const DEFAULT_TTL_SECONDS: u64 = 3600;
/// Route family of chat answers: `/v1/chat/completions` and
/// `/api/chat-optimized` generate the same text for the same rendered
/// prompt and sampling, so they share entries.
pub const CHAT: &str = "chat";

/// Counter names in [`COUNTERS`].
pub const HITS: &str = "cache_hits";
/// Lookups that found nothing usable (absent, expired or unreadable).
pub const MISSES: &str = "cache_misses";
/// Answers written to the cache.
pub const STORES: &str = "cache_stores";
/// Entries removed before their eviction: expired, invalidated or cleared.
pub const INVALIDATIONS: &str = "cache_invalidations";

/// The answer's time to live from `TERN_CACHE_TTL`.
pub fn ttl_seconds() -> u64 {
    ttl_from(std::env::var("TERN_CACHE_TTL").ok().as_deref())
}

/// The time to live a `TERN_CACHE_TTL` value asks for; the default when
/// absent or not a number.
pub fn ttl_from(value: Option<&str>) -> u64 {
    value.and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_TTL_SECONDS)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whether a request may be answered from the cache: never when it asks for
/// log-probabilities; else `use_cache` decides when given; otherwise only
/// deterministic sampling (greedy, or a fixed seed) is, because a sampled answer replayed would hide the variety the
/// client asked for.
pub fn cacheable(params: &SamplingParams, use_cache: Option<bool>) -> bool {
    // A stored answer keeps no log-probabilities to replay.
    params.logprobs.is_none() && use_cache.unwrap_or(params.temperature == 0.0 || params.seed.is_some())
}

/// The cache key of a request: `family:` and the hex SHA-256 of everything
/// that shapes the answer. Every field is length-prefixed so no two requests
/// hash the same bytes. Priority and `timeout_ms` are left out: they change
/// when an answer comes, not what it says, and only finished answers are
/// stored.
pub fn key(family: &str, model: &str, rendered: &str, params: &SamplingParams, identity: Option<&str>) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(family.as_bytes());
    field(model.as_bytes());
    field(rendered.as_bytes());
    field(&params.max_tokens.to_le_bytes());
    field(&params.temperature.to_bits().to_le_bytes());
    field(&params.top_k.to_le_bytes());
    field(&params.top_p.to_bits().to_le_bytes());
    field(&params.min_p.to_bits().to_le_bytes());
    field(&params.repeat_penalty.to_bits().to_le_bytes());
    field(&params.repeat_last_n.to_le_bytes());
    field(&params.presence_penalty.to_bits().to_le_bytes());
    field(&params.frequency_penalty.to_bits().to_le_bytes());
    match params.seed {
        Some(seed) => field(&seed.to_le_bytes()),
        None => field(b""),
    }
    field(&(params.stop.len() as u64).to_le_bytes());
    for stop in &params.stop {
        field(stop.as_bytes());
    }
    field(&[u8::from(params.ignore_eos)]);
    match &params.constraint {
        None => field(b""),
        Some(Constraint::JsonObject) => field(b"json-object"),
        Some(Constraint::JsonSchema(schema)) => {
            field(b"json-schema");
            field(schema.as_bytes());
        }
        Some(Constraint::Gbnf(grammar)) => {
            field(b"gbnf");
            field(grammar.as_bytes());
        }
        Some(Constraint::JsonOrText(schema)) => {
            field(b"json-or-text");
            field(schema.as_bytes());
        }
    }
    match identity {
        Some(who) => field(who.as_bytes()),
        None => field(b""),
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{family}:{hex}")
}

/// Whose answers a request may see. tern's host names the key that matched
/// in `x-tern-identity`, whichever header carried it, and drops the header
/// when a client sends it; under another runtime the credentials as sent
/// (`Authorization`, then `x-api-key`) stand in. `None`: anonymous.
pub fn identity(req: &Request) -> Option<String> {
    if let Some(id) = req.header(IDENTITY_HEADER) {
        return Some(format!("identity:{id}"));
    }
    if let Some(auth) = req.header("authorization") {
        return Some(format!("authorization:{auth}"));
    }
    req.header("x-api-key").map(|key| format!("x-api-key:{key}"))
}

/// The header in which tern's host names the caller's key.
pub const IDENTITY_HEADER: &str = "x-tern-identity";
/// The header in which tern's host says the caller holds an admin key.
pub const ROLE_HEADER: &str = "x-tern-role";

/// True when the host says the caller holds an admin key (or the server
/// has no keys at all).
pub fn is_admin(req: &Request) -> bool {
    req.header(ROLE_HEADER) == Some("admin")
}

/// One stored answer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When it was stored, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The whole generated text.
    pub text: String,
    /// How the original generation ended, with its usage.
    pub finished: Finished,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let u = &self.finished.usage;
        json!({
            "created_ms": self.created_ms,
            "text": self.text,
            "finish_reason": finish_reason(self.finished.reason),
            "usage": [u.prompt_tokens, u.completion_tokens, u.cached_tokens],
            "ms": [u.queue_ms, u.prompt_ms, u.generation_ms],
        })
        .to_string()
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let reason = match v["finish_reason"].as_str()? {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            _ => return None,
        };
        let count = |i: usize| v["usage"][i].as_u64().and_then(|n| u32::try_from(n).ok());
        let ms = |i: usize| v["ms"][i].as_f64();
        let usage = Usage {
            prompt_tokens: count(0)?,
            completion_tokens: count(1)?,
            cached_tokens: count(2)?,
            queue_ms: ms(0)?,
            prompt_ms: ms(1)?,
            generation_ms: ms(2)?,
        };
        Some(Entry {
            created_ms: v["created_ms"].as_u64()?,
            text: v["text"].as_str()?.to_string(),
            finished: Finished { reason, usage },
        })
    }
}

/// What the cache made of one request.
pub enum Lookup {
    /// Not cacheable: served fresh, not stored, no `x-cache` header.
    Bypass,
    /// A stored answer, still valid.
    Hit(Entry),
    /// Looked up and missed: the fresh answer is stored under this key.
    Miss(String),
}

/// Looks `messages` up for a chat route. Costs one `render-chat` and, for a
/// cacheable request, one store read; never starts a generation.
pub fn look_up(
    req: &Request,
    engine: &dyn EngineClient,
    model: &str,
    messages: &[Message],
    params: &SamplingParams,
    use_cache: Option<bool>,
) -> Result<Lookup, ApiError> {
    if !cacheable(params, use_cache) {
        return Ok(Lookup::Bypass);
    }
    let rendered = engine.render_chat(model, messages).map_err(|e| ApiError::engine(e, "messages"))?;
    let key = key(CHAT, model, &rendered, params, identity(req).as_deref());
    let store = engine.store();
    match fetch(store, &key, ttl_seconds(), now_ms()) {
        Some(entry) => {
            store.increment(COUNTERS, HITS, 1);
            Ok(Lookup::Hit(entry))
        }
        None => {
            store.increment(COUNTERS, MISSES, 1);
            Ok(Lookup::Miss(key))
        }
    }
}

/// The valid entry under `key`; an expired or unreadable one is deleted.
fn fetch(store: &dyn Store, key: &str, ttl_seconds: u64, now_ms: u64) -> Option<Entry> {
    let bytes = store.get(RESPONSES, key)?;
    match Entry::decode(&bytes) {
        Some(entry) if now_ms.saturating_sub(entry.created_ms) < ttl_seconds.saturating_mul(1000) => Some(entry),
        _ => {
            store.delete(RESPONSES, key);
            store.increment(COUNTERS, INVALIDATIONS, 1);
            None
        }
    }
}

impl Lookup {
    /// The `x-cache` header value: `hit`, `miss`, or none when bypassed.
    pub fn header(&self) -> Option<&'static str> {
        match self {
            Lookup::Bypass => None,
            Lookup::Hit(_) => Some("hit"),
            Lookup::Miss(_) => Some("miss"),
        }
    }

    /// The `cached` field answers carry: whether this one came from the
    /// cache, or none when it was never looked up.
    pub fn cached(&self) -> Option<bool> {
        match self {
            Lookup::Bypass => None,
            Lookup::Hit(_) => Some(true),
            Lookup::Miss(_) => Some(false),
        }
    }

    /// The generation to read: the stored answer replayed for a hit, the
    /// engine's otherwise. A miss's generation records itself; the returned
    /// [`Pending`] stores the record once the answer is delivered.
    pub fn generation(
        self,
        engine: &dyn EngineClient,
        start: impl FnOnce() -> Result<Box<dyn GenerationStream>, Error>,
    ) -> Result<(Box<dyn GenerationStream>, Option<Pending>), Error> {
        match self {
            Lookup::Bypass => Ok((start()?, None)),
            Lookup::Hit(entry) => Ok((Box::new(Replayed { text: Some(entry.text), finished: entry.finished }), None)),
            Lookup::Miss(key) => {
                let generation = start()?;
                let draft = Rc::new(RefCell::new(Draft { text: String::new(), finished: None }));
                let recording = Recording { generation, draft: draft.clone() };
                Ok((Box::new(recording), Some(Pending { store: engine.store().share(), key, draft })))
            }
        }
    }
}

/// A stored answer read back as a generation: all its text in one piece,
/// then its original finish.
struct Replayed {
    text: Option<String>,
    finished: Finished,
}

impl GenerationStream for Replayed {
    fn next_event(&mut self) -> Result<Event, Error> {
        match self.text.take() {
            Some(text) if !text.is_empty() => Ok(Event::Text(text)),
            _ => Ok(Event::Finished(self.finished)),
        }
    }
}

/// What a recorded generation has said so far.
struct Draft {
    text: String,
    finished: Option<Finished>,
}

/// The engine's generation, passed through and written down.
struct Recording {
    generation: Box<dyn GenerationStream>,
    draft: Rc<RefCell<Draft>>,
}

impl GenerationStream for Recording {
    fn next_event(&mut self) -> Result<Event, Error> {
        let event = self.generation.next_event()?;
        let mut draft = self.draft.borrow_mut();
        match &event {
            Event::Text(text) if draft.finished.is_none() => draft.text.push_str(text),
            Event::Finished(finished) => draft.finished = Some(*finished),
            _ => {}
        }
        Ok(event)
    }
}

/// A recorded answer waiting to be stored.
pub struct Pending {
    store: Box<dyn Store>,
    key: String,
    draft: Rc<RefCell<Draft>>,
}

impl Pending {
    /// Stores the answer if it ended with `stop` or `length`: a cancelled,
    /// timed-out or failed one is partial and never stored. A store that
    /// refuses (say, an answer bigger than the whole cache) is not an error
    /// for the client, who already has the answer.
    pub fn commit(self) {
        let draft = self.draft.borrow();
        let Some(finished) = draft.finished else { return };
        if !matches!(finished.reason, FinishReason::Stop | FinishReason::Length) {
            return;
        }
        let entry = Entry { created_ms: now_ms(), text: draft.text.clone(), finished };
        if self.store.set(RESPONSES, &self.key, &entry.encode()).is_ok() {
            self.store.increment(COUNTERS, STORES, 1);
        }
    }
}

/// A streamed body that commits its [`Pending`] answer when the last piece
/// has been handed out, i.e. written to the client: a client that leaves
/// early drops this instead, and nothing is stored.
pub struct StoreAtEnd<I> {
    events: I,
    pending: Option<Pending>,
}

impl<I> StoreAtEnd<I> {
    /// `events`, storing `pending` (if any) at their end.
    pub fn new(events: I, pending: Option<Pending>) -> Self {
        StoreAtEnd { events, pending }
    }
}

impl<I: Iterator<Item = Vec<u8>>> Iterator for StoreAtEnd<I> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let next = self.events.next();
        if next.is_none() {
            if let Some(pending) = self.pending.take() {
                pending.commit();
            }
        }
        next
    }
}

/// The event-stream response of `events` as the lookup `header` found it.
/// A miss stores its answer once every event is out ([`StoreAtEnd`]). A
/// hit is framed like a fresh answer but sent as one piece: replaying costs
/// nothing, and one write spares the client the per-write round trips of a
/// connection that delays small writes (Nagle's algorithm).
pub fn event_stream(
    events: impl Iterator<Item = Vec<u8>> + 'static,
    pending: Option<Pending>,
    header: Option<&'static str>,
) -> Response {
    let response = if header == Some("hit") {
        Response::event_stream(std::iter::once(events.flatten().collect()))
    } else {
        Response::event_stream(StoreAtEnd::new(events, pending))
    };
    mark(response, header)
}

/// Adds `x-cache` to `response` when the request was looked up.
pub fn mark(response: Response, header: Option<&str>) -> Response {
    match header {
        Some(value) => response.with_header("x-cache", value),
        None => response,
    }
}

/// The cache's counters and the responses bucket's usage.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that found nothing valid.
    pub misses: u64,
    /// Answers stored.
    pub stores: u64,
    /// Entries removed by expiry, invalidation or clearing.
    pub invalidations: u64,
    /// What the responses bucket holds.
    pub usage: BucketUsage,
}

impl Stats {
    /// Hits over lookups; 0 before any lookup.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }

    /// The figures as `/api/cache-stats` reports them.
    pub fn json(&self) -> Value {
        json!({
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate(),
            "stores": self.stores,
            "invalidations": self.invalidations,
            "entries": self.usage.entries,
            "bytes": self.usage.bytes,
            "max_bytes": self.usage.max_bytes,
            "evictions": self.usage.evictions,
        })
    }
}

/// A counter's value (adding nothing reads it).
pub fn counter(store: &dyn Store, name: &str) -> u64 {
    store.increment(COUNTERS, name, 0)
}

/// The cache's statistics now.
pub fn stats(store: &dyn Store) -> Stats {
    Stats {
        hits: counter(store, HITS),
        misses: counter(store, MISSES),
        stores: counter(store, STORES),
        invalidations: counter(store, INVALIDATIONS),
        usage: store.usage(RESPONSES).unwrap_or(BucketUsage { entries: 0, bytes: 0, max_bytes: 0, evictions: 0 }),
    }
}

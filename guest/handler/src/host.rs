//! The engine client, the key-value store and the generation stream over
//! the host's imports: `tern:llm/inference`, `wasi:keyvalue` and
//! `tern:llm/store-usage`. With `export.rs`, the only code that knows it
//! runs in wasm.

use crate::bindings::tern::llm::inference::{self, Generation};
use crate::bindings::tern::llm::store_usage;
use crate::bindings::wasi::keyvalue;
use crate::engine_client::{
    BucketUsage, Embedding, EngineClient, EngineStatus, Error, Event, GenerationStream, JobInfo, Message, ModelInfo,
    Prompt, SamplingParams, Store,
};

/// [`EngineClient`] over the host's `tern:llm/inference` imports.
pub struct HostEngine;

impl EngineClient for HostEngine {
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
        Ok(Box::new(HostGeneration { generation }))
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

/// A host generation read by blocking on a pollable of it.
struct HostGeneration {
    generation: Generation,
}

impl GenerationStream for HostGeneration {
    /// Each wait takes a fresh pollable: one that stays ready once it has
    /// fired (an adapter's clock, say) would otherwise turn every later
    /// wait into a spin. It is dropped before the generation can be.
    fn next_event(&mut self) -> Result<Event, Error> {
        loop {
            match self.generation.next()? {
                Event::Pending => self.generation.subscribe().block(),
                event => return Ok(event),
            }
        }
    }
}

//! The host side of `tern:llm/inference`: converts WIT values to engine calls
//! and back. Policy lives in the guest and compute in the engine; this file
//! only translates.
//!
//! Every function returns two levels: the outer `wasmtime::Result` is a host
//! bug or trap, the inner `Result` is an error the guest handles.

use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynPollable;

use crate::bindings::inference::{self as wit, Host, HostGeneration};
use crate::resources::GenerationResource;
use crate::state::HostState;

tern_engine::contract_conversions!(wit);

impl Host for HostState {
    fn list_models(&mut self) -> wasmtime::Result<Vec<wit::ModelInfo>> {
        Ok(to_wit_models(self.engine.models()))
    }

    fn status(&mut self) -> wasmtime::Result<wit::EngineStatus> {
        let uptime_ms = crate::metrics::uptime().as_millis() as u64;
        Ok(to_wit_status(self.engine.status(), uptime_ms, crate::metrics::rss_bytes()))
    }

    fn tokenize(&mut self, model: String, text: String) -> wasmtime::Result<Result<Vec<u32>, wit::Error>> {
        Ok(self.engine.tokenize(&model, &text).map_err(to_wit_error))
    }

    fn embed(
        &mut self,
        model: String,
        inputs: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<wit::Embedding>, wit::Error>> {
        // Embeddings compute on the calling thread: let tokio move other
        // tasks off this worker meanwhile.
        let result = tokio::task::block_in_place(|| self.engine.embed(&model, &inputs));
        Ok(result.map(to_wit_embeddings).map_err(to_wit_error))
    }

    fn detokenize(&mut self, model: String, tokens: Vec<u32>) -> wasmtime::Result<Result<String, wit::Error>> {
        Ok(self.engine.detokenize(&model, &tokens).map_err(to_wit_error))
    }

    fn render_chat(
        &mut self,
        model: String,
        messages: Vec<wit::Message>,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        Ok(self.engine.render_chat(&model, &to_engine_messages(messages)).map_err(to_wit_error))
    }

    fn generate(
        &mut self,
        model: String,
        prompt: wit::Prompt,
        params: wit::SamplingParams,
    ) -> wasmtime::Result<Result<Resource<GenerationResource>, wit::Error>> {
        let request = to_engine_request(model, prompt, params);
        match self.engine.generate(request) {
            Ok(generation) => Ok(Ok(self.table.push(GenerationResource { generation })?)),
            Err(e) => Ok(Err(to_wit_error(e))),
        }
    }

    async fn submit_job(
        &mut self,
        model: String,
        prompt: wit::Prompt,
        params: wit::SamplingParams,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        let id = match self.engine.submit_job(to_engine_request(model, prompt, params), self.caller.clone()) {
            Ok(id) => id,
            Err(e) => return Ok(Err(to_wit_error(e))),
        };
        if let Some(jobs) = &self.jobs {
            jobs.publish(&id).await;
        }
        Ok(Ok(id))
    }

    /// The caller's job: on this engine, else (with replicas) on another.
    /// Another caller's job is unknown to it.
    async fn job_status(&mut self, id: String) -> wasmtime::Result<Option<wit::JobInfo>> {
        let info = match (self.engine.job_status(&id), &self.jobs) {
            (Some(info), _) => Some(info),
            (None, Some(jobs)) => jobs.status(&id).await,
            (None, None) => None,
        };
        Ok(info.filter(|i| i.owner == self.caller).map(to_wit_job))
    }

    async fn cancel_job(&mut self, id: String) -> wasmtime::Result<Option<wit::JobInfo>> {
        if let Some(info) = self.engine.job_status(&id) {
            if info.owner != self.caller {
                return Ok(None);
            }
            let info = self.engine.cancel_job(&id).unwrap_or(info);
            if let Some(jobs) = &self.jobs {
                jobs.publish(&id).await;
            }
            return Ok(Some(to_wit_job(info)));
        }
        Ok(match &self.jobs {
            Some(jobs) => jobs.cancel(&id, self.caller.as_deref()).await.map(to_wit_job),
            None => None,
        })
    }
}

impl HostGeneration for HostState {
    fn subscribe(&mut self, this: Resource<GenerationResource>) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(&mut self.table, this)
    }

    fn next(&mut self, this: Resource<GenerationResource>) -> wasmtime::Result<Result<wit::Event, wit::Error>> {
        let g = self.table.get(&this)?;
        let event = match g.generation.next() {
            Ok(event) => event,
            Err(e) => return Ok(Err(to_wit_error(e))),
        };
        if let tern_engine::Event::Finished(f) = &event {
            self.tokens = self.tokens.saturating_add(f.usage.completion_tokens);
        }
        Ok(Ok(to_wit_event(event)))
    }

    fn drop(&mut self, this: Resource<GenerationResource>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

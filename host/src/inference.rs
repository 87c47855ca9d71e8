//! The host side of `tern:llm/inference`: converts WIT values to engine calls
//! and back. Policy lives in the guest and compute in the engine; this file
//! only translates.
//!
//! Every function returns two levels: the outer `wasmtime::Result` is a host
//! bug or trap, the inner `Result` is an error the guest handles.

use std::time::Duration;

use tern_engine as engine;
use tern_engine::grammar::Constraint;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynPollable;

use crate::bindings::inference::{self as wit, Host, HostGeneration};
use crate::resources::GenerationResource;
use crate::state::HostState;

fn to_wit_error(e: engine::EngineError) -> wit::Error {
    use engine::EngineError as E;
    match e {
        E::InvalidRequest(m) => wit::Error::InvalidRequest(m),
        E::UnknownModel(m) => wit::Error::UnknownModel(m),
        E::ContextOverflow { prompt_tokens, context_length } => {
            wit::Error::ContextOverflow(wit::ContextOverflow { prompt_tokens, context_length })
        }
        E::Overloaded(m) => wit::Error::Overloaded(m),
        E::Unavailable(m) => wit::Error::Unavailable(m),
        E::Internal(m) => wit::Error::Internal(m),
    }
}

fn to_wit_finished(f: engine::Finished) -> wit::Finished {
    let u = f.usage;
    wit::Finished {
        reason: match f.reason {
            engine::FinishReason::Stop => wit::FinishReason::Stop,
            engine::FinishReason::Length => wit::FinishReason::Length,
            engine::FinishReason::Cancelled => wit::FinishReason::Cancelled,
            engine::FinishReason::Timeout => wit::FinishReason::Timeout,
        },
        usage: wit::Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
            queue_ms: u.queue_ms,
            prompt_ms: u.prompt_ms,
            generation_ms: u.generation_ms,
        },
    }
}

fn to_wit_histogram(h: engine::stats::Histogram) -> wit::Histogram {
    wit::Histogram { bounds: h.bounds, counts: h.counts, sum: h.sum, count: h.count }
}

fn to_wit_job(j: engine::JobInfo) -> wit::JobInfo {
    let state = match j.state {
        engine::JobState::Queued { position, estimated_wait } => {
            wit::JobState::Queued(wit::QueuePlace { position, estimated_wait_ms: estimated_wait.as_millis() as u64 })
        }
        engine::JobState::Running => wit::JobState::Running,
        engine::JobState::Done(f) => wit::JobState::Done(to_wit_finished(f)),
        engine::JobState::Cancelled => wit::JobState::Cancelled,
        engine::JobState::Failed(e) => wit::JobState::Failed(to_wit_error(e)),
    };
    wit::JobInfo {
        id: j.id,
        model: j.model,
        state,
        text: j.text,
        prompt_tokens: j.prompt_tokens,
        created_at_ms: j.created_at_ms,
    }
}

/// The engine's request for a WIT generate call.
fn to_engine_request(model: String, prompt: wit::Prompt, params: wit::SamplingParams) -> engine::GenerateRequest {
    let prompt = match prompt {
        wit::Prompt::Text(t) => engine::Prompt::Text(t),
        wit::Prompt::Chat(m) => engine::Prompt::Chat(to_engine_messages(m)),
        wit::Prompt::Tokens(t) => engine::Prompt::Tokens(t),
    };
    engine::GenerateRequest {
        model,
        prompt,
        max_tokens: params.max_tokens,
        sampling: engine::SamplingParams {
            temperature: params.temperature,
            top_k: params.top_k as usize,
            top_p: params.top_p,
            min_p: params.min_p,
            repeat_penalty: params.repeat_penalty,
            repeat_last_n: params.repeat_last_n as usize,
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            seed: 0,
            ignore_eos: params.ignore_eos,
            logprobs: params.logprobs,
            constraint: params.constraint.map(|c| match c {
                wit::Constraint::JsonObject => Constraint::JsonObject,
                wit::Constraint::JsonSchema(s) => Constraint::JsonSchema(s),
                wit::Constraint::Gbnf(g) => Constraint::Gbnf(g),
                wit::Constraint::JsonOrText(s) => Constraint::JsonOrText(s),
            }),
        },
        seed: params.seed,
        stop: params.stop,
        timeout: params.timeout_ms.map(|ms| Duration::from_millis(ms.into())),
        priority: match params.priority {
            wit::Priority::Interactive => engine::Priority::Interactive,
            wit::Priority::Batch => engine::Priority::Batch,
        },
    }
}

fn to_engine_messages(messages: Vec<wit::Message>) -> Vec<engine::Message> {
    messages.into_iter().map(|m| engine::Message { role: m.role, content: m.content }).collect()
}

impl Host for HostState {
    fn list_models(&mut self) -> wasmtime::Result<Vec<wit::ModelInfo>> {
        Ok(self
            .engine
            .models()
            .into_iter()
            .map(|m| wit::ModelInfo {
                id: m.id,
                architecture: m.architecture,
                parameter_count: m.parameter_count,
                context_length: m.context_length,
                quantization: m.quantization,
                size_bytes: m.size_bytes,
                modified_at: m.modified_at,
            })
            .collect())
    }

    fn status(&mut self) -> wasmtime::Result<wit::EngineStatus> {
        let s = self.engine.status();
        let l = s.latencies;
        Ok(wit::EngineStatus {
            ready: s.ready,
            running: s.running,
            waiting: s.waiting,
            max_waiting: s.max_waiting,
            prompt_tokens_total: s.prompt_tokens_total,
            generated_tokens_total: s.generated_tokens_total,
            requests_total: s.requests_total,
            cancelled_total: s.cancelled_total,
            rejected_total: s.rejected_total,
            preempted_total: s.preempted_total,
            kv_block_tokens: s.kv_block_tokens,
            kv_blocks_total: s.kv_blocks_total,
            kv_blocks_used: s.kv_blocks_used,
            kv_blocks_cached: s.kv_blocks_cached,
            prefix_hits_total: s.prefix_hits_total,
            cached_tokens_total: s.cached_tokens_total,
            steps_total: s.steps_total,
            time_to_first_token: to_wit_histogram(l.time_to_first_token),
            inter_token_latency: to_wit_histogram(l.inter_token),
            queue_time: to_wit_histogram(l.queue_time),
            request_latency: to_wit_histogram(l.request),
            uptime_ms: crate::metrics::uptime().as_millis() as u64,
            rss_bytes: crate::metrics::rss_bytes(),
        })
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
        Ok(result
            .map(|all| all.into_iter().map(|e| wit::Embedding { vector: e.vector, tokens: e.tokens }).collect())
            .map_err(to_wit_error))
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
        Ok(match g.generation.next() {
            Ok(engine::Event::Pending) => Ok(wit::Event::Pending),
            Ok(engine::Event::Text(t)) => Ok(wit::Event::Text(t)),
            Ok(engine::Event::Logprobs(l)) => Ok(wit::Event::Logprobs(
                l.into_iter()
                    .map(|t| wit::TokenLogprob {
                        id: t.id,
                        bytes: t.bytes,
                        logprob: t.logprob,
                        top: t
                            .top
                            .into_iter()
                            .map(|a| wit::TopLogprob { id: a.id, bytes: a.bytes, logprob: a.logprob })
                            .collect(),
                    })
                    .collect(),
            )),
            Ok(engine::Event::Finished(f)) => {
                self.tokens = self.tokens.saturating_add(f.usage.completion_tokens);
                Ok(wit::Event::Finished(to_wit_finished(f)))
            }
            Err(e) => Err(to_wit_error(e)),
        })
    }

    fn drop(&mut self, this: Resource<GenerationResource>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

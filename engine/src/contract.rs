//! The engine's values as those of the `tern:llm/inference` contract
//! (`wit/inference.wit`), for whoever implements the contract over an
//! engine: the native host (bindings from wasmtime's `bindgen!`) and the
//! local adapter inside wasm (bindings from `wit_bindgen::generate!`). The
//! two generators give the contract's types the same names and fields, so
//! one mapping serves both: [`contract_conversions!`] writes it into the
//! module that invokes it, against the generated module it is given.
//!
//! ```ignore
//! use crate::bindings::tern::llm::inference as wit;
//! tern_engine::contract_conversions!(wit);
//! ```

/// Writes `to_wit_*` and `to_engine_*` functions that convert between the
/// engine's types and those of the generated `tern:llm/inference` module
/// `$wit` (an identifier in scope). Only translation: no policy.
#[macro_export]
macro_rules! contract_conversions {
    ($wit:ident) => {
        #[allow(dead_code)]
        fn to_wit_error(e: $crate::EngineError) -> $wit::Error {
            use $crate::EngineError as E;
            match e {
                E::InvalidRequest(m) => $wit::Error::InvalidRequest(m),
                E::UnknownModel(m) => $wit::Error::UnknownModel(m),
                E::ContextOverflow { prompt_tokens, context_length } => {
                    $wit::Error::ContextOverflow($wit::ContextOverflow { prompt_tokens, context_length })
                }
                E::Overloaded(m) => $wit::Error::Overloaded(m),
                E::Unavailable(m) => $wit::Error::Unavailable(m),
                E::Internal(m) => $wit::Error::Internal(m),
            }
        }

        #[allow(dead_code)]
        fn to_wit_finished(f: $crate::Finished) -> $wit::Finished {
            let u = f.usage;
            $wit::Finished {
                reason: match f.reason {
                    $crate::FinishReason::Stop => $wit::FinishReason::Stop,
                    $crate::FinishReason::Length => $wit::FinishReason::Length,
                    $crate::FinishReason::Cancelled => $wit::FinishReason::Cancelled,
                    $crate::FinishReason::Timeout => $wit::FinishReason::Timeout,
                },
                usage: $wit::Usage {
                    prompt_tokens: u.prompt_tokens,
                    completion_tokens: u.completion_tokens,
                    cached_tokens: u.cached_tokens,
                    queue_ms: u.queue_ms,
                    prompt_ms: u.prompt_ms,
                    generation_ms: u.generation_ms,
                },
            }
        }

        #[allow(dead_code)]
        fn to_wit_job(j: $crate::JobInfo) -> $wit::JobInfo {
            let state = match j.state {
                $crate::JobState::Queued { position, estimated_wait } => $wit::JobState::Queued($wit::QueuePlace {
                    position,
                    estimated_wait_ms: estimated_wait.as_millis() as u64,
                }),
                $crate::JobState::Running => $wit::JobState::Running,
                $crate::JobState::Done(f) => $wit::JobState::Done(to_wit_finished(f)),
                $crate::JobState::Cancelled => $wit::JobState::Cancelled,
                $crate::JobState::Failed(e) => $wit::JobState::Failed(to_wit_error(e)),
            };
            $wit::JobInfo {
                id: j.id,
                model: j.model,
                state,
                text: j.text,
                prompt_tokens: j.prompt_tokens,
                created_at_ms: j.created_at_ms,
            }
        }

        #[allow(dead_code)]
        fn to_wit_models(models: Vec<$crate::ModelInfo>) -> Vec<$wit::ModelInfo> {
            models
                .into_iter()
                .map(|m| $wit::ModelInfo {
                    id: m.id,
                    architecture: m.architecture,
                    parameter_count: m.parameter_count,
                    context_length: m.context_length,
                    quantization: m.quantization,
                    size_bytes: m.size_bytes,
                    modified_at: m.modified_at,
                    device: m.device,
                    device_memory_bytes: m.device_memory_bytes,
                })
                .collect()
        }

        /// The engine's status, with the process's uptime and resident
        /// memory, which only the caller knows.
        #[allow(dead_code)]
        fn to_wit_status(s: $crate::EngineStatus, uptime_ms: u64, rss_bytes: u64) -> $wit::EngineStatus {
            let histogram = |h: $crate::stats::Histogram| $wit::Histogram {
                bounds: h.bounds,
                counts: h.counts,
                sum: h.sum,
                count: h.count,
            };
            let l = s.latencies;
            $wit::EngineStatus {
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
                time_to_first_token: histogram(l.time_to_first_token),
                inter_token_latency: histogram(l.inter_token),
                queue_time: histogram(l.queue_time),
                request_latency: histogram(l.request),
                uptime_ms,
                rss_bytes,
            }
        }

        #[allow(dead_code)]
        fn to_wit_embeddings(all: Vec<$crate::Embedding>) -> Vec<$wit::Embedding> {
            all.into_iter().map(|e| $wit::Embedding { vector: e.vector, tokens: e.tokens }).collect()
        }

        #[allow(dead_code)]
        fn to_wit_event(event: $crate::Event) -> $wit::Event {
            match event {
                $crate::Event::Pending => $wit::Event::Pending,
                $crate::Event::Text(t) => $wit::Event::Text(t),
                $crate::Event::Logprobs(l) => $wit::Event::Logprobs(
                    l.into_iter()
                        .map(|t| $wit::TokenLogprob {
                            id: t.id,
                            bytes: t.bytes,
                            logprob: t.logprob,
                            top: t
                                .top
                                .into_iter()
                                .map(|a| $wit::TopLogprob { id: a.id, bytes: a.bytes, logprob: a.logprob })
                                .collect(),
                        })
                        .collect(),
                ),
                $crate::Event::Finished(f) => $wit::Event::Finished(to_wit_finished(f)),
            }
        }

        /// The engine's request for a generate call.
        #[allow(dead_code)]
        fn to_engine_request(
            model: String,
            prompt: $wit::Prompt,
            params: $wit::SamplingParams,
        ) -> $crate::GenerateRequest {
            use $crate::grammar::Constraint;
            let prompt = match prompt {
                $wit::Prompt::Text(t) => $crate::Prompt::Text(t),
                $wit::Prompt::Chat(m) => $crate::Prompt::Chat(to_engine_messages(m)),
                $wit::Prompt::Tokens(t) => $crate::Prompt::Tokens(t),
            };
            $crate::GenerateRequest {
                model,
                prompt,
                max_tokens: params.max_tokens,
                sampling: $crate::SamplingParams {
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
                        $wit::Constraint::JsonObject => Constraint::JsonObject,
                        $wit::Constraint::JsonSchema(s) => Constraint::JsonSchema(s),
                        $wit::Constraint::Gbnf(g) => Constraint::Gbnf(g),
                        $wit::Constraint::JsonOrText(s) => Constraint::JsonOrText(s),
                    }),
                },
                seed: params.seed,
                stop: params.stop,
                timeout: params.timeout_ms.map(|ms| ::std::time::Duration::from_millis(ms.into())),
                priority: match params.priority {
                    $wit::Priority::Interactive => $crate::Priority::Interactive,
                    $wit::Priority::Batch => $crate::Priority::Batch,
                },
            }
        }

        #[allow(dead_code)]
        fn to_engine_messages(messages: Vec<$wit::Message>) -> Vec<$crate::Message> {
            messages.into_iter().map(|m| $crate::Message { role: m.role, content: m.content }).collect()
        }
    };
}

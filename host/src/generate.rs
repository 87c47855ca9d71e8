//! `tern generate`: the engine without HTTP, streaming one completion to
//! stdout and its timings to stderr.

use std::io::Write as _;

use anyhow::Context as _;
use tern_engine::{Engine, Event, GenerateRequest, Message, Prompt, SamplingParams};

use crate::cli::{apply_threads, engine_config, GenerateArgs};

/// Streams one completion of `args.prompt` to stdout.
pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    apply_threads(&args.model);
    let engine = Engine::load(engine_config(&args.model))?;
    let model = engine.models().into_iter().next().context("no model loaded")?;
    let prompt = if args.chat {
        Prompt::Chat(vec![Message { role: "user".into(), content: args.prompt.clone() }])
    } else {
        Prompt::Text(args.prompt.clone())
    };
    let generation = engine.generate(GenerateRequest {
        model: model.id,
        prompt,
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            repeat_last_n: 64,
            seed: 0,
            ..Default::default()
        },
        seed: args.seed,
        stop: args.stop,
        timeout: None,
        priority: tern_engine::Priority::Interactive,
    })?;
    let mut out = std::io::stdout().lock();
    if !args.chat {
        write!(out, "{}", args.prompt)?;
    }
    loop {
        match generation.next()? {
            Event::Pending => generation.wait(),
            Event::Logprobs(_) => {}
            Event::Text(t) => {
                write!(out, "{t}")?;
                out.flush()?;
            }
            Event::Finished(f) => {
                writeln!(out)?;
                let u = f.usage;
                let tps = if u.generation_ms > 0.0 { u.completion_tokens as f64 * 1e3 / u.generation_ms } else { 0.0 };
                eprintln!(
                    "[{:?}] prompt {} tokens in {:.1} ms, generated {} tokens in {:.1} ms ({tps:.1} tok/s)",
                    f.reason, u.prompt_tokens, u.prompt_ms, u.completion_tokens, u.generation_ms
                );
                return Ok(());
            }
        }
    }
}

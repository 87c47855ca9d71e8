//! Generations through the engine's public API on a small fixture model.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use tern_engine::{
    Engine, EngineConfig, EngineError, Event, FinishReason, GenerateRequest, Message, Priority, Prompt, SamplingParams,
};

const MODEL: &str = "tiny-fixture";

fn engine() -> Engine {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-tq2_0.gguf");
    Engine::load(EngineConfig { models: vec![path], ..Default::default() }).expect("fixture loads")
}

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, ..Default::default() }
}

fn request(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        model: MODEL.into(),
        prompt: Prompt::Text(prompt.into()),
        max_tokens,
        sampling: greedy(),
        seed: Some(1),
        stop: vec![],
        timeout: None,
        priority: Priority::Interactive,
    }
}

#[test]
fn model_is_listed_with_its_facts() {
    let models = engine().models();
    assert_eq!(models.len(), 1);
    let m = &models[0];
    assert_eq!(m.id, MODEL);
    assert_eq!(m.architecture, "bitnet-b1.58");
    assert_eq!(m.quantization, "TQ2_0");
    assert_eq!(m.context_length, 64);
    assert!(m.parameter_count > 500_000, "{}", m.parameter_count);
}

#[test]
fn max_tokens_ends_with_length_and_counts_usage() {
    let (_, f) = engine().generate(request("the", 5)).unwrap().collect().unwrap();
    assert_eq!(f.reason, FinishReason::Length);
    assert_eq!(f.usage.completion_tokens, 5);
    assert!(f.usage.prompt_tokens >= 2, "BOS plus the prompt");
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let (_, f) = engine().generate(request("the", 0)).unwrap().collect().unwrap();
    assert_eq!(f.reason, FinishReason::Length);
    assert_eq!(f.usage.prompt_tokens + f.usage.completion_tokens, 64);
}

#[test]
fn same_seed_gives_same_text_and_temperature_zero_is_deterministic() {
    let e = engine();
    let sampled = |seed| {
        let mut r = request("in the", 20);
        r.sampling = SamplingParams { temperature: 1.0, ..Default::default() };
        r.seed = Some(seed);
        e.generate(r).unwrap().collect().unwrap().0
    };
    assert_eq!(sampled(3), sampled(3));
    let a = e.generate(request("in the", 20)).unwrap().collect().unwrap().0;
    let b = e.generate(request("in the", 20)).unwrap().collect().unwrap().0;
    assert_eq!(a, b);
}

#[test]
fn stop_string_ends_generation_and_is_not_shown() {
    let e = engine();
    let (full, _) = e.generate(request("the", 24)).unwrap().collect().unwrap();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "{full:?}");
    let stop: String = chars[4..7].iter().collect();
    let before = &full[..full.find(&stop).unwrap()];
    let mut r = request("the", 24);
    r.stop = vec![stop.clone()];
    let (text, f) = e.generate(r).unwrap().collect().unwrap();
    assert_eq!(f.reason, FinishReason::Stop);
    assert_eq!(text, before, "stop {stop:?}");
}

#[test]
fn dropping_a_generation_cancels_it_within_one_decode_step() {
    // The fixture is so small that a whole generation can end before the
    // reader gets its first text; try until one is dropped mid-way.
    let e = engine();
    for _ in 0..200 {
        let before = e.status().cancelled_total;
        let g = e.generate(request("the", 0)).unwrap();
        while let Event::Pending = g.next().unwrap() {
            g.wait();
        }
        drop(g);
        let generated_at_drop = e.status().generated_tokens_total;
        let deadline = Instant::now() + Duration::from_secs(5);
        while e.status().running > 0 {
            assert!(Instant::now() < deadline, "still running");
            std::thread::sleep(Duration::from_millis(1));
        }
        let s = e.status();
        if s.cancelled_total == before {
            continue; // it had finished before the drop
        }
        assert_eq!(s.cancelled_total, before + 1);
        // At most the step that was under way when the drop landed.
        assert!(
            s.generated_tokens_total <= generated_at_drop + 1,
            "{} after {generated_at_drop}",
            s.generated_tokens_total
        );
        return;
    }
    panic!("no generation was still running when it was dropped");
}

#[test]
fn abort_all_ends_running_and_queued_generations_with_its_error_and_refuses_new_ones() {
    let e = engine();
    let gone = EngineError::Overloaded("shutting down".into());
    let running: Vec<_> = (0..3).map(|_| e.generate(request("the", 0)).unwrap()).collect();
    e.abort_all(gone.clone());
    for g in running {
        // Each either finished before the abort landed or ends with the error.
        match g.collect() {
            Ok(_) => {}
            Err(err) => assert_eq!(err, gone),
        }
    }
    assert_eq!(e.generate(request("the", 0)).err(), Some(gone));
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.status().running > 0 || e.status().kv_blocks_used > 0 {
        assert!(Instant::now() < deadline, "sequences left after abort_all");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_passed_deadline_finishes_as_timeout() {
    let mut r = request("the", 0);
    r.timeout = Some(Duration::ZERO);
    let (_, f) = engine().generate(r).unwrap().collect().unwrap();
    assert_eq!(f.reason, FinishReason::Timeout);
}

#[test]
fn prompt_longer_than_the_context_is_refused_with_both_counts() {
    let long = "the cat sat on the mat ".repeat(40);
    match engine().generate(request(&long, 1)) {
        Err(EngineError::ContextOverflow { prompt_tokens, context_length }) => {
            assert_eq!(context_length, 64);
            assert!(prompt_tokens > 64);
        }
        Err(e) => panic!("wrong error {e:?}"),
        Ok(_) => panic!("accepted an overlong prompt"),
    }
}

#[test]
fn unknown_model_and_bad_parameters_are_refused() {
    let e = engine();
    let mut r = request("x", 1);
    r.model = "gpt-4".into();
    assert!(matches!(e.generate(r), Err(EngineError::UnknownModel(_))));
    let mut r = request("x", 1);
    r.sampling.top_p = 0.0;
    assert!(matches!(e.generate(r), Err(EngineError::InvalidRequest(_))));
    let mut r = request("x", 1);
    r.prompt = Prompt::Tokens(vec![1, 100_000]);
    assert!(matches!(e.generate(r), Err(EngineError::InvalidRequest(_))));
}

#[test]
fn chat_prompt_uses_the_template() {
    let e = engine();
    let messages = vec![Message { role: "user".into(), content: "hi".into() }];
    let rendered = e.render_chat(MODEL, &messages).unwrap();
    assert_eq!(rendered, "<|begin_of_text|>User: hi<|eot_id|>Assistant: ");
    let mut r = request("", 3);
    r.prompt = Prompt::Chat(messages);
    let g = e.generate(r).unwrap();
    // BOS, "User: hi", <|eot_id|>, "Assistant: " as control tokens and text.
    assert!(g.prompt_tokens() >= 4);
    g.collect().unwrap();
}

#[test]
fn many_generations_at_once_all_finish() {
    let e = engine();
    let gens: Vec<_> = (0..8).map(|i| e.generate(request(&format!("{i} the"), 6)).unwrap()).collect();
    for g in gens {
        let (_, f) = g.collect().unwrap();
        assert_eq!(f.usage.completion_tokens, 6);
    }
    // The scheduler publishes the end before it takes the sequence off its list.
    let deadline = Instant::now() + Duration::from_secs(2);
    while e.status().running > 0 {
        assert!(Instant::now() < deadline, "sequences left running");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn embeddings_are_unit_length_deterministic_and_tell_inputs_apart() {
    let e = engine();
    let inputs = ["the king".to_string(), "in the".to_string(), "the king".to_string()];
    let out = e.embed(MODEL, &inputs).unwrap();
    assert_eq!(out.len(), 3);
    for emb in &out {
        let norm: f32 = emb.vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert!(emb.tokens >= 2);
    }
    assert_eq!(out[0], out[2]);
    assert_ne!(out[0].vector, out[1].vector);
    // One input alone gives the same vector as in a list.
    assert_eq!(e.embed(MODEL, &inputs[1..2]).unwrap()[0], out[1]);
    assert!(matches!(e.embed(MODEL, &[String::new()]), Err(EngineError::InvalidRequest(_))));
    assert!(matches!(e.embed("nope", &inputs), Err(EngineError::UnknownModel(_))));
    let long = "the ".repeat(200);
    assert!(matches!(e.embed(MODEL, &[long]), Err(EngineError::InvalidRequest(_))));
}

#[test]
fn aliases_name_the_first_model_and_unknown_names_are_refused_unless_any_is_accepted() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tern-tiny.gguf");
    let with = |aliases: Vec<String>, accept_any_model| {
        Engine::load(EngineConfig { models: vec![path.clone()], aliases, accept_any_model, ..Default::default() })
    };
    let e = with(vec!["gpt-4o-mini".into(), "llama".into()], false).unwrap();
    let ids: Vec<String> = e.models().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, ["tern-tiny", "gpt-4o-mini", "llama"]);
    let answer = |e: &Engine, model: &str| e.generate(GenerateRequest { model: model.into(), ..request("Hi", 4) });
    let (by_alias, _) = answer(&e, "llama").unwrap().collect().unwrap();
    let (by_id, _) = answer(&e, "tern-tiny").unwrap().collect().unwrap();
    assert_eq!(by_alias, by_id, "the same model, greedy");
    assert!(matches!(answer(&e, "mistral"), Err(EngineError::UnknownModel(_))));
    let any = with(vec![], true).unwrap();
    assert!(answer(&any, "mistral").is_ok());
    for bad in ["tern-tiny", " ", "a\nb"] {
        assert!(with(vec![bad.into()], false).is_err(), "{bad:?}");
    }
}

#[test]
fn logprobs_come_before_their_text_one_per_token_and_greedy_picks_the_likeliest() {
    let e = engine();
    let sampling = SamplingParams { logprobs: Some(3), ..greedy() };
    let g = e.generate(GenerateRequest { sampling, ..request("The king", 12) }).unwrap();
    let (mut text, mut logprobs, mut text_before_logprobs) = (Vec::new(), Vec::new(), 0);
    let finished = loop {
        match g.next().unwrap() {
            Event::Pending => g.wait(),
            Event::Logprobs(l) => logprobs.extend(l),
            Event::Text(t) => {
                text.extend_from_slice(t.as_bytes());
                text_before_logprobs =
                    text_before_logprobs.max(text.len().saturating_sub(
                        logprobs.iter().map(|l: &tern_engine::TokenLogprob| l.bytes.len()).sum::<usize>(),
                    ));
            }
            Event::Finished(f) => break f,
        }
    };
    assert_eq!(logprobs.len() as u32, finished.usage.completion_tokens);
    assert_eq!(text_before_logprobs, 0, "no text arrives before the log-probabilities of its tokens");
    let bytes: Vec<u8> = logprobs.iter().flat_map(|l| l.bytes.clone()).collect();
    assert_eq!(String::from_utf8_lossy(&bytes), String::from_utf8_lossy(&text));
    for l in &logprobs {
        assert_eq!(l.top.len(), 3);
        assert!(l.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert_eq!(
            (l.top[0].id, &l.top[0].bytes, l.top[0].logprob),
            (l.id, &l.bytes, l.logprob),
            "greedy takes the likeliest"
        );
        assert!(l.logprob <= 0.0);
    }
    let too_many = SamplingParams { logprobs: Some(21), ..greedy() };
    assert!(matches!(
        e.generate(GenerateRequest { sampling: too_many, ..request("Hi", 2) }),
        Err(EngineError::InvalidRequest(_))
    ));
}

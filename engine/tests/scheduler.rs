//! The scheduler under load: batching leaves results unchanged, clients
//! that leave free everything, prefixes are reused, the queue refuses when
//! full, priorities order the queue, jobs outlive their caller, and a short
//! KV pool preempts instead of failing.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tern_engine::{
    Engine, EngineConfig, EngineError, Event, FinishReason, GenerateRequest, Generation, JobState, Priority, Prompt,
    SamplingParams,
};
use tern_tools::synth::{self, SynthSpec};

const BUNDLED: &str = "tern-tiny";

fn bundled_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tern-tiny.gguf")
}

fn engine_with(config: EngineConfig) -> Engine {
    Engine::load(EngineConfig { models: vec![bundled_path()], ..config }).expect("the bundled model loads")
}

fn request(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        model: BUNDLED.into(),
        prompt: Prompt::Text(prompt.into()),
        max_tokens,
        sampling: SamplingParams { temperature: 0.0, ..Default::default() },
        seed: Some(7),
        stop: vec![],
        timeout: None,
        priority: Priority::Interactive,
    }
}

/// Sixteen different prompts, some sharing leading words.
fn prompts() -> Vec<String> {
    let starts = ["The king", "To be", "O Romeo", "And God said", "Now is the winter", "My lord", "Friends", "Thou"];
    (0..16).map(|i| format!("{} {}", starts[i % starts.len()], ["", "of the realm", "spake"][i % 3])).collect()
}

/// Waits until `cond` holds, for at most `limit`.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn greedy_and_seeded_output_is_the_same_alone_and_batched_with_fifteen_others() {
    for sampling in [
        SamplingParams { temperature: 0.0, ..Default::default() },
        SamplingParams { temperature: 0.9, ..Default::default() },
    ] {
        let req = |p: &str| GenerateRequest { sampling: sampling.clone(), ..request(p, 40) };
        let alone: Vec<String> = prompts()
            .iter()
            .map(|p| engine_with(EngineConfig::default()).generate(req(p)).unwrap().collect().unwrap().0)
            .collect();
        let e = engine_with(EngineConfig { max_running: 16, ..Default::default() });
        let gens: Vec<Generation> = prompts().iter().map(|p| e.generate(req(p)).unwrap()).collect();
        let batched: Vec<String> = gens.into_iter().map(|g| g.collect().unwrap().0).collect();
        for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
            assert_eq!(a, b, "prompt {i} ({:?}) at temperature {}", prompts()[i], sampling.temperature);
        }
        // They really ran together: fewer steps than tokens.
        let s = e.status();
        assert!(
            s.steps_total < s.generated_tokens_total / 4,
            "{} steps for {} tokens",
            s.steps_total,
            s.generated_tokens_total
        );
    }
}

#[test]
fn sixty_four_clients_leaving_at_random_points_free_every_kv_block_within_a_second() {
    let e = engine_with(EngineConfig { max_running: 16, max_queue: 64, ..Default::default() });
    let mut rng = SmallRng::seed_from_u64(64);
    let gens: Vec<(Generation, usize)> =
        (0..64).map(|i| (e.generate(request(&format!("{i} The king"), 0)).unwrap(), rng.random_range(0..12))).collect();
    // Each client reads a few pieces, then leaves; some leave before their
    // first token, while still queued.
    let readers: Vec<_> = gens
        .into_iter()
        .map(|(g, pieces)| {
            std::thread::spawn(move || {
                let mut seen = 0;
                while seen < pieces {
                    match g.next().unwrap() {
                        Event::Pending => g.wait(),
                        Event::Text(_) => seen += 1,
                        Event::Logprobs(_) => {}
                        Event::Finished(_) => break,
                    }
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let left = Instant::now();
    eventually(Duration::from_secs(1), "nothing running, waiting or holding KV blocks", || {
        let s = e.status();
        s.running == 0 && s.waiting == 0 && s.kv_blocks_used == 0
    });
    let s = e.status();
    eprintln!("freed in {:?}: {s:?}", left.elapsed());
    assert_eq!(s.requests_total, 64);
    assert!(s.cancelled_total >= 60, "{} cancelled", s.cancelled_total);
}

/// A synthetic model of the bundled model's shape with a 2,048-token context.
fn long_context_model(dir: &Path) -> PathBuf {
    let spec = SynthSpec { n_ctx: 2048, name: "long-synth".into(), ..SynthSpec::preset("tern-tiny").unwrap() };
    let path = dir.join("long.gguf");
    synth::write(&spec, std::fs::File::create(&path).unwrap(), |_| {}).unwrap();
    path
}

#[test]
fn a_second_request_with_the_same_thousand_token_prefix_reuses_its_kv_blocks() {
    let dir = std::env::temp_dir().join(format!("tern-scheduler-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = Engine::load(EngineConfig { models: vec![long_context_model(&dir)], ..Default::default() }).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut rng = SmallRng::seed_from_u64(3);
    let prefix: Vec<u32> = (0..1000).map(|_| rng.random_range(10..2000)).collect();
    let run = |suffix: &[u32]| {
        let mut tokens = prefix.clone();
        tokens.extend_from_slice(suffix);
        let req = GenerateRequest { model: "long-synth".into(), prompt: Prompt::Tokens(tokens), ..request("", 4) };
        e.generate(req).unwrap().collect().unwrap().1.usage
    };
    let first = run(&[5, 6, 7]);
    let second = run(&[8, 9]);
    eprintln!("first {first:?}\nsecond {second:?}");
    assert_eq!(first.cached_tokens, 0);
    assert!(second.cached_tokens >= 900, "{} cached", second.cached_tokens);
    assert!(second.prompt_ms < first.prompt_ms, "{} ms vs {} ms", second.prompt_ms, first.prompt_ms);
    let s = e.status();
    assert_eq!(s.prefix_hits_total, 1);
    assert_eq!(s.cached_tokens_total, second.cached_tokens as u64);
}

#[test]
fn a_request_arriving_at_a_full_queue_is_refused_at_once() {
    let e = engine_with(EngineConfig { max_running: 1, max_queue: 2, ..Default::default() });
    let running = e.generate(request("The king", 0)).unwrap();
    eventually(Duration::from_secs(5), "the first request running", || e.status().running == 1);
    let queued: Vec<_> = (0..2).map(|_| e.generate(request("To be", 0)).unwrap()).collect();
    let asked = Instant::now();
    match e.generate(request("Thou", 0)) {
        Err(EngineError::Overloaded(m)) => assert!(m.contains("waiting"), "{m}"),
        other => panic!("expected overloaded, got {:?}", other.map(|_| ())),
    }
    assert!(asked.elapsed() < Duration::from_millis(50), "refusal took {:?}", asked.elapsed());
    assert_eq!(e.status().rejected_total, 1);
    drop((running, queued));
}

#[test]
fn an_idle_engine_takes_max_running_plus_max_queue_requests_at_once() {
    let e = engine_with(EngineConfig { max_running: 4, max_queue: 8, ..Default::default() });
    // Never ending by themselves, so every one holds its place.
    let endless = || GenerateRequest {
        sampling: SamplingParams { temperature: 0.0, ignore_eos: true, ..Default::default() },
        ..request("The king", 0)
    };
    let accepted: Vec<Generation> =
        (0..12).map(|i| e.generate(endless()).unwrap_or_else(|err| panic!("{i}: {err}"))).collect();
    assert!(matches!(e.generate(endless()), Err(EngineError::Overloaded(_))));
    eventually(Duration::from_secs(5), "four running, eight waiting", || {
        let s = e.status();
        s.running == 4 && s.waiting == 8
    });
    assert!(matches!(e.generate(endless()), Err(EngineError::Overloaded(_))));
    assert_eq!(e.status().rejected_total, 2);
    drop(accepted);
}

#[test]
fn too_many_or_too_long_stop_strings_are_refused() {
    let e = engine_with(EngineConfig::default());
    let with_stops = |stop: Vec<String>| GenerateRequest { stop, ..request("The king", 4) };
    assert!(e.generate(with_stops(vec!["x".repeat(256); 16])).is_ok());
    for stop in [vec!["x".into(); 17], vec!["x".repeat(257)]] {
        match e.generate(with_stops(stop)) {
            Err(EngineError::InvalidRequest(m)) => assert!(m.contains("stop"), "{m}"),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn ignore_eos_runs_a_generation_to_its_max_tokens() {
    let e = engine_with(EngineConfig::default());
    let ends = |ignore_eos| -> Vec<(FinishReason, u32)> {
        (0..8u64)
            .map(|seed| {
                let r = GenerateRequest {
                    sampling: SamplingParams { temperature: 1.5, ignore_eos, ..Default::default() },
                    seed: Some(seed),
                    ..request("The king", 96)
                };
                let (_, finished) = e.generate(r).unwrap().collect().unwrap();
                (finished.reason, finished.usage.completion_tokens)
            })
            .collect()
    };
    // The same seeds end some generations early when the end token may be picked.
    let free = ends(false);
    assert!(free.iter().any(|&(reason, n)| reason == FinishReason::Stop && n < 96), "{free:?}");
    assert!(ends(true).iter().all(|&end| end == (FinishReason::Length, 96)));
}

#[test]
fn interactive_requests_start_before_batch_work_that_queued_first() {
    let e = engine_with(EngineConfig { max_running: 1, ..Default::default() });
    let blocker = e.generate(request("The king", 0)).unwrap();
    eventually(Duration::from_secs(5), "the blocker running", || e.status().running == 1);
    let batch = e.submit_job(GenerateRequest { priority: Priority::Batch, ..request("To be", 3) }, None).unwrap();
    let interactive = e.generate(request("Thou", 3)).unwrap();
    match e.job_status(&batch).unwrap().state {
        JobState::Queued { position, .. } => assert_eq!(position, 1, "the interactive one goes first"),
        other => panic!("expected queued, got {other:?}"),
    }
    drop(blocker);
    let (_, f) = interactive.collect().unwrap();
    assert_eq!(f.usage.completion_tokens, 3);
    eventually(Duration::from_secs(5), "the batch job done", || {
        matches!(e.job_status(&batch).unwrap().state, JobState::Done(_))
    });
}

#[test]
fn a_job_outlives_its_caller_reports_its_result_and_can_be_cancelled() {
    let e = engine_with(EngineConfig::default());
    let id = e.submit_job(request("My lord", 12), None).unwrap();
    eventually(Duration::from_secs(10), "the job done", || {
        matches!(e.job_status(&id).unwrap().state, JobState::Done(_))
    });
    let info = e.job_status(&id).unwrap();
    let JobState::Done(f) = &info.state else { unreachable!() };
    assert_eq!(f.usage.completion_tokens, 12);
    assert!(!info.text.is_empty());
    assert_eq!(info.model, BUNDLED);
    // The same text as a generation read as it comes.
    let direct = e.generate(request("My lord", 12)).unwrap().collect().unwrap().0;
    assert_eq!(info.text, direct);

    let long = e.submit_job(request("Friends", 0), None).unwrap();
    let cancelled = e.cancel_job(&long).unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    eventually(Duration::from_secs(1), "the cancelled job gone from the scheduler", || {
        let s = e.status();
        s.running == 0 && s.waiting == 0 && s.kv_blocks_used == 0
    });
    assert!(e.job_status("job-unknown").is_none());
    assert!(e.cancel_job("job-unknown").is_none());
}

#[test]
fn a_short_kv_pool_preempts_sequences_and_they_still_give_the_same_text() {
    // The pool never holds less than one full context: 512 positions here,
    // while six sequences want about 1,200.
    let reqs: Vec<GenerateRequest> = prompts()[..6].iter().map(|p| request(p, 190)).collect();
    let alone: Vec<String> = reqs
        .iter()
        .map(|r| engine_with(EngineConfig::default()).generate(r.clone()).unwrap().collect().unwrap().0)
        .collect();
    let e = engine_with(EngineConfig { kv_memory: 0, ..Default::default() });
    let gens: Vec<Generation> = reqs.into_iter().map(|r| e.generate(r).unwrap()).collect();
    for (i, g) in gens.into_iter().enumerate() {
        let (text, f) = g.collect().unwrap();
        assert_eq!(text, alone[i], "sequence {i}");
        assert_ne!(f.reason, FinishReason::Cancelled);
    }
    let s = e.status();
    assert_eq!(s.kv_blocks_total, 32);
    assert!(s.preempted_total > 0, "{s:?}");
}

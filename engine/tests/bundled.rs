//! The bundled model (models/tern-tiny.gguf), trained by models/train.py:
//! it loads through the same paths as any GGUF, matches its independent
//! reference logits, and writes real words.

use serde_json::Value;
use std::collections::HashSet;
use std::path::PathBuf;
use tern_engine::model::Session;
use tern_engine::tokenizer::ChatMessage;
use tern_engine::{Engine, EngineConfig, GenerateRequest, Message, Priority, Prompt, SamplingParams};

/// Share of sampled words that must occur in the training corpus.
const MIN_REAL_WORD_SHARE: f64 = 0.8;
/// Largest |engine - reference| on a last-position logit. Independent f32
/// implementations sum in different orders, which can move one int8
/// activation code by one and shift later logits by ~0.1 (models/golden.json
/// measures 0.05 between its two references).
const MAX_BUNDLED_LOGIT_ABS_ERROR: f32 = 0.15;
/// Positions whose top two engine logits are closer than this may pick
/// either token; elsewhere the argmax must agree with the reference.
const ARGMAX_TIE_MARGIN: f32 = 0.3;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn engine() -> Engine {
    let path = models_dir().join("tern-tiny.gguf");
    assert!(path.exists(), "{} is missing: the bundled model ships in the repository", path.display());
    Engine::load(EngineConfig { models: vec![path], ..Default::default() }).expect("the bundled model loads")
}

/// Lower-cased runs of ASCII letters with at most one inner apostrophe, the
/// rule models/corpus_words.py used to write models/words.txt.
fn words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    let mut word = String::new();
    let mut chars = lower.chars().peekable();
    while let Some(c) = chars.next() {
        let inner_apostrophe =
            c == '\'' && !word.is_empty() && !word.contains('\'') && chars.peek().is_some_and(char::is_ascii_lowercase);
        if c.is_ascii_lowercase() || inner_apostrophe {
            word.push(c);
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

#[test]
fn bundled_model_is_small_and_described() {
    let size = std::fs::metadata(models_dir().join("tern-tiny.gguf")).unwrap().len();
    assert!(size < 4 << 20, "{size} bytes");
    let m = &engine().models()[0];
    assert_eq!(m.id, "tern-tiny");
    assert_eq!(m.architecture, "bitnet-b1.58");
    assert_eq!(m.quantization, "TQ2_0");
    assert_eq!(m.context_length, 512);
}

#[test]
fn sampled_text_is_mostly_words_of_the_training_corpus() {
    let known: HashSet<String> = std::fs::read_to_string(models_dir().join("words.txt"))
        .expect("models/words.txt")
        .lines()
        .map(str::to_string)
        .collect();
    let e = engine();
    // Sample until 200 tokens have been generated; a turn that ends early
    // (the model's end-of-text) is followed by another prompt and seed.
    let prompts = ["The king", "And the LORD said", "What news from the court?"];
    let (mut sampled, mut tokens, mut round) = (Vec::new(), 0, 0u64);
    while tokens < 200 {
        let text = prompts[round as usize % prompts.len()];
        let prompt = if round % 3 == 2 {
            Prompt::Chat(vec![Message { role: "user".into(), content: text.into() }])
        } else {
            Prompt::Text(text.into())
        };
        let g = e
            .generate(GenerateRequest {
                model: "tern-tiny".into(),
                prompt,
                max_tokens: 200 - tokens,
                sampling: SamplingParams { temperature: 0.8, ..Default::default() },
                seed: Some(11 + round),
                stop: vec![],
                timeout: None,
                priority: Priority::Interactive,
            })
            .unwrap();
        let (text, finished) = g.collect().unwrap();
        tokens += finished.usage.completion_tokens;
        sampled.extend(words(&text));
        round += 1;
    }
    assert!(sampled.len() >= 40, "only {} words sampled", sampled.len());
    let real = sampled.iter().filter(|w| known.contains(*w)).count();
    let share = real as f64 / sampled.len() as f64;
    eprintln!("{real} of {} sampled words occur in the corpus ({:.1}%)", sampled.len(), share * 100.0);
    assert!(share >= MIN_REAL_WORD_SHARE, "{share}: {sampled:?}");
}

#[test]
fn word_rule_matches_the_word_list_script() {
    assert_eq!(words("O'er the King's men -- 'tis 42 fair!"), ["o'er", "the", "king's", "men", "tis", "fair"]);
}

#[test]
fn bundled_model_matches_the_transformers_reference_and_tokenizer() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(models_dir().join("golden.json")).expect("models/golden.json"))
            .unwrap();
    let m = engine().model("tern-tiny").unwrap();
    let tok = &m.tokenizer;
    let ids_of = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    for case in golden["prompts"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        let got = if case["kind"] == "chat" {
            let messages: Vec<ChatMessage> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| ChatMessage { role: m["role"].as_str().unwrap(), content: m["content"].as_str().unwrap() })
                .collect();
            assert_eq!(tok.render_chat(&messages, true).unwrap(), case["text"].as_str().unwrap(), "{name}");
            tok.encode_chat(&messages, true).unwrap()
        } else {
            let mut ids = vec![tok.bos().unwrap()];
            ids.extend(tok.encode_text(case["text"].as_str().unwrap()));
            ids
        };
        assert_eq!(got, want, "{name}: token ids differ from the HF tokenizer's");

        let vocab = m.model.config().n_vocab;
        let logits = Session::new(&m.model).forward(&want, true);
        let last = &logits[(want.len() - 1) * vocab..];
        let reference: Vec<f32> =
            case["last_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let worst = last.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{name}: {} tokens, last-position max abs error {worst:.3e}", want.len());
        assert!(worst <= MAX_BUNDLED_LOGIT_ABS_ERROR, "{name}: {worst}");
        for (p, want_best) in ids_of(&case["argmax"]).into_iter().enumerate() {
            let row = &logits[p * vocab..(p + 1) * vocab];
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] >= ARGMAX_TIE_MARGIN {
                assert_eq!(tern_engine::sampler::argmax(row), want_best, "{name} position {p}");
            }
        }
    }
}

/// Largest |F16 head − Q8_0 head| on a logit: Q8_0 rounds each weight to
/// 1/254 of its block's absmax, about 0.2% noise on a dot product.
const MAX_Q8_0_HEAD_LOGIT_ABS_ERROR: f32 = 0.1;

#[test]
fn q8_0_head_halves_the_head_and_keeps_the_logits() {
    use tern_engine::gguf::GgufFile;
    use tern_engine::model::{LoadOptions, Model};
    let file = GgufFile::open(&models_dir().join("tern-tiny.gguf")).unwrap();
    let f16 = Model::load(&file, &LoadOptions::default()).unwrap();
    let q8 = Model::load(&file, &LoadOptions { q8_0_head: true, ..LoadOptions::default() }).unwrap();
    let c = f16.config();
    let head_f16 = c.n_vocab * c.n_embd * 2;
    let head_q8 = c.n_vocab * c.n_embd / 32 * 34;
    assert_eq!(f16.summary().bytes_per_token - q8.summary().bytes_per_token, head_f16 - head_q8);
    let prompt = [0u32, 100, 200, 300, 400];
    let a = Session::new(&f16).forward(&prompt, true);
    let b = Session::new(&q8).forward(&prompt, true);
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < MAX_Q8_0_HEAD_LOGIT_ABS_ERROR, "max |Δlogit| {worst}");
    assert!(worst > 0.0, "the Q8_0 head should differ from the F16 one");
}

/// The model loaded from its image in memory into an engine without
/// threads (as the local adapter runs it on wasm32), turned by the caller.
fn inline_engine() -> Engine {
    let bytes = std::fs::read(models_dir().join("tern-tiny.gguf")).unwrap();
    let file = tern_engine::gguf::GgufFile::from_bytes(bytes).unwrap();
    let options = tern_engine::model::LoadOptions::default();
    let model = tern_engine::LoadedModel::from_gguf(&file, None, "bundled", 0, &options).unwrap();
    Engine::inline(EngineConfig::default(), vec![model]).unwrap()
}

#[test]
fn an_inline_engine_turned_by_its_caller_equals_the_threaded_one() {
    let (threaded, inline) = (engine(), inline_engine());
    assert_eq!(inline.models()[0].id, "tern-tiny");
    assert!(!threaded.turn(), "a threaded engine's scheduler turns by itself");
    let request = |text: &str, seed| GenerateRequest {
        model: "tern-tiny".into(),
        prompt: Prompt::Text(text.into()),
        max_tokens: 32,
        sampling: SamplingParams { temperature: 0.8, ..Default::default() },
        seed: Some(seed),
        stop: vec![],
        timeout: None,
        priority: Priority::Interactive,
    };
    // Two generations at once, batched in the same turns.
    let a = inline.generate(request("The king", 1)).unwrap();
    let b = inline.generate(request("And the LORD said", 2)).unwrap();
    let (mut texts, mut done) = ([String::new(), String::new()], [false, false]);
    let mut turns = 0;
    while done != [true, true] {
        for (i, g) in [&a, &b].into_iter().enumerate() {
            loop {
                match g.next().unwrap() {
                    tern_engine::Event::Text(t) => texts[i].push_str(&t),
                    tern_engine::Event::Finished(f) => {
                        assert_eq!(f.usage.completion_tokens, 32);
                        done[i] = true;
                        break;
                    }
                    tern_engine::Event::Pending => break,
                    tern_engine::Event::Logprobs(_) => {}
                }
            }
        }
        if done != [true, true] {
            assert!(inline.turn(), "work is left, so a turn runs");
            turns += 1;
        }
    }
    assert!(!inline.turn(), "nothing is left to turn");
    assert!(turns < 40, "{turns} turns for two 32-token generations batched together");
    for (text, (prompt, seed)) in texts.iter().zip([("The king", 1), ("And the LORD said", 2)]) {
        let (want, _) = threaded.generate(request(prompt, seed)).unwrap().collect().unwrap();
        assert_eq!(text, &want);
    }
    let inputs = vec!["The king".to_string()];
    assert_eq!(
        inline.embed("tern-tiny", &inputs).unwrap()[0].vector,
        threaded.embed("tern-tiny", &inputs).unwrap()[0].vector
    );
}

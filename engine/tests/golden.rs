//! The engine's logits against an independent reference: a float64 numpy
//! forward pass written from the equations (tests/reference/bitnet_ref.py),
//! over small GGUF files written by tests/fixtures/make_fixtures.py.

use serde_json::Value;
use std::path::PathBuf;
use tern_engine::gguf::GgufFile;
use tern_engine::model::{LoadOptions, Model, Session};

/// Largest |engine - reference| on any logit. The reference works in float64;
/// on these fixtures no f32 activation of the engine lands on the other side
/// of an int8 rounding boundary (one that did would move later logits by up
/// to ~1), so the engine agrees to f32 precision (measured: 6e-5).
const MAX_LOGIT_ABS_ERROR: f64 = 1e-3;
/// Largest RMS error over a case, relative to the spread of the reference
/// logits (measured: 2e-6).
const MAX_LOGIT_REL_RMS_ERROR: f64 = 1e-4;
/// Positions whose top two reference logits are this far apart must agree on the argmax.
const ARGMAX_MARGIN: f64 = 3.0;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixtures().join("golden.json")).expect("tests/fixtures/golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

fn load(file: &str) -> Model {
    let g = GgufFile::open(&fixtures().join(file)).expect("fixture opens");
    Model::load(&g, &LoadOptions::default()).expect("fixture loads")
}

/// Logits (positions, vocab) of `tokens` run through a fresh cache, one call.
fn all_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    Session::new(model).forward(tokens, true)
}

fn tokens_of(case: &Value) -> Vec<u32> {
    case["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

#[test]
fn logits_match_numpy_reference_for_every_fixture_and_case() {
    let golden = golden();
    let files = golden["files"].as_object().expect("files");
    assert!(files.len() >= 5, "expected five fixtures");
    for (file, spec) in files {
        let model = load(file);
        let vocab = model.config().n_vocab;
        for case in spec["cases"].as_array().unwrap() {
            let tokens = tokens_of(case);
            assert!(tokens.len() >= 3);
            let got = all_logits(&model, &tokens);
            let refs = case["logits"].as_array().unwrap();
            let margins = case["top2_margin"].as_array().unwrap();
            let argmax = case["argmax"].as_array().unwrap();
            let (mut max_abs, mut sq, mut n, mut mean, mut mean_sq) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for (p, row) in refs.iter().enumerate() {
                let row: Vec<f64> = row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                assert_eq!(row.len(), vocab);
                let mine = &got[p * vocab..(p + 1) * vocab];
                for (a, b) in mine.iter().zip(&row) {
                    let d = (*a as f64 - b).abs();
                    max_abs = max_abs.max(d);
                    sq += d * d;
                    n += 1.0;
                    mean += b;
                    mean_sq += b * b;
                }
                if margins[p].as_f64().unwrap() > ARGMAX_MARGIN {
                    let best = tern_engine::sampler::argmax(mine) as u64;
                    assert_eq!(best, argmax[p].as_u64().unwrap(), "{file} {} position {p}: argmax", case["name"]);
                }
            }
            let std = (mean_sq / n - (mean / n).powi(2)).sqrt();
            let rel_rms = (sq / n).sqrt() / std;
            eprintln!("{file} {}: max abs {max_abs:.2e}, rel rms {rel_rms:.2e}", case["name"]);
            assert!(max_abs <= MAX_LOGIT_ABS_ERROR, "{file} {}: max abs error {max_abs}", case["name"]);
            assert!(rel_rms <= MAX_LOGIT_REL_RMS_ERROR, "{file} {}: relative rms error {rel_rms}", case["name"]);
        }
    }
}

#[test]
fn tq2_0_tq1_0_and_i2_s_give_identical_logits() {
    let tokens = tokens_of(&golden()["files"]["tiny-tq2_0.gguf"]["cases"][0]);
    let tq2 = all_logits(&load("tiny-tq2_0.gguf"), &tokens);
    let tq1 = all_logits(&load("tiny-tq1_0.gguf"), &tokens);
    let i2s = all_logits(&load("tiny-i2_s.gguf"), &tokens);
    assert!(tq2.len() > 1000);
    assert_eq!(tq2, tq1, "TQ1_0 differs from TQ2_0");
    assert_eq!(tq2, i2s, "I2_S differs from TQ2_0");
}

#[test]
fn token_by_token_decoding_matches_one_batched_pass() {
    let model = load("tiny-tq2_0.gguf");
    let tokens = tokens_of(&golden()["files"]["tiny-tq2_0.gguf"]["cases"][0]);
    let vocab = model.config().n_vocab;
    let batched = all_logits(&model, &tokens);
    let mut session = Session::new(&model);
    for (p, t) in tokens.iter().enumerate() {
        let one = session.forward(&[*t], false);
        let want = &batched[p * vocab..(p + 1) * vocab];
        let worst = one.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "position {p}: {worst}");
    }
    assert_eq!(session.len(), tokens.len());
}

//! Synthetic models (`tern_tools::synth`) read back through the GGUF reader,
//! the model loader and the tokenizer, and every ternary format of one seed
//! is the same model.

use tern_engine::gguf::{GgmlType, GgufFile};
use tern_engine::model::{LoadOptions, Model, Session};
use tern_engine::tokenizer::Tokenizer;
use tern_tools::synth::{self, SynthSpec};

const TERNARY: [GgmlType; 3] = [GgmlType::TQ2_0, GgmlType::TQ1_0, GgmlType::I2_S];
const HEADS: [GgmlType; 2] = [GgmlType::F16, GgmlType::Q8_0];
const TOKENS: [u32; 5] = [297, 7, 100, 260, 3];

fn small(ternary: GgmlType, head: GgmlType) -> SynthSpec {
    SynthSpec {
        name: "synth-test".into(),
        n_vocab: 300,
        n_embd: 256,
        n_layer: 2,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 512,
        n_ctx: 64,
        rope_theta: 10_000.0,
        ternary,
        head,
        seed: 5,
    }
}

fn bytes_of(spec: &SynthSpec) -> Vec<u8> {
    synth::write(spec, Vec::new(), |_| {}).expect("synthetic model writes")
}

fn gguf(spec: &SynthSpec) -> GgufFile {
    GgufFile::from_bytes(bytes_of(spec)).expect("synthetic model parses")
}

fn logits(model: &Model) -> Vec<f32> {
    Session::new(model).forward(&TOKENS, true)
}

#[test]
fn synth_loads_for_every_ternary_and_head_format() {
    for head in HEADS {
        let mut first: Option<Vec<f32>> = None;
        for ternary in TERNARY {
            let spec = small(ternary, head);
            let g = gguf(&spec);
            assert_eq!(g.version, 3);
            assert_eq!(g.str("general.architecture").unwrap(), "bitnet");
            assert_eq!(g.str("general.name").unwrap(), "synth-test");
            assert_eq!(g.tensors.len(), 2 + 11 * spec.n_layer);
            assert!(!g.tensors.contains_key("output.weight"), "the head is tied");
            assert_eq!(g.tensor("token_embd.weight").unwrap().ggml_type, head);
            assert_eq!(g.tensor("blk.1.ffn_down.weight").unwrap().dims, vec![512, 256]);
            assert_eq!(g.tensor("blk.0.attn_k.weight").unwrap().dims, vec![256, 128]);
            assert_eq!(g.tensor("blk.0.ffn_sub_norm.weight").unwrap().ggml_type, GgmlType::F32);

            let model = Model::load(&g, &LoadOptions::default()).unwrap_or_else(|e| panic!("{ternary} + {head}: {e}"));
            let c = model.config();
            assert_eq!(
                (c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.n_ff, c.n_ctx, c.rope_dim),
                (300, 256, 2, 4, 2, 512, 64, 64)
            );
            assert_eq!(c.rope_theta, 10_000.0);
            assert_eq!(model.summary().ternary_type, ternary);

            let got = logits(&model);
            assert_eq!(got.len(), TOKENS.len() * 300);
            assert!(got.iter().all(|v| v.is_finite()), "{ternary} + {head}: non-finite logits");
            match &first {
                None => first = Some(got),
                Some(want) => {
                    let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{ternary} + {head}: logits differ from TQ2_0's");
                }
            }
        }
    }
}

#[test]
fn synth_logits_are_neither_flat_nor_huge() {
    let got = logits(&Model::load(&gguf(&small(GgmlType::TQ2_0, GgmlType::F16)), &LoadOptions::default()).unwrap());
    let last = &got[got.len() - 300..];
    let (lo, hi) = last.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(hi - lo > 0.01 && hi - lo < 100.0, "logit spread {}", hi - lo);
}

#[test]
fn synth_is_deterministic_for_a_seed() {
    let spec = small(GgmlType::TQ1_0, GgmlType::Q8_0);
    assert_eq!(bytes_of(&spec), bytes_of(&spec));
    let other = SynthSpec { seed: 6, ..spec.clone() };
    assert_ne!(bytes_of(&spec), bytes_of(&other));
}

#[test]
fn synth_reports_progress_up_to_the_file_size() {
    let spec = small(GgmlType::I2_S, GgmlType::F16);
    let mut reports = Vec::new();
    let bytes = synth::write(&spec, Vec::new(), |p| reports.push((p.tensor, p.n_tensors, p.written, p.total))).unwrap();
    let &(tensor, n_tensors, written, total) = reports.last().unwrap();
    assert_eq!((tensor + 1, n_tensors), (24, 24));
    assert_eq!((written, total), (bytes.len() as u64, bytes.len() as u64));
    assert!(reports.windows(2).all(|w| w[0].2 <= w[1].2), "progress never goes back");
}

#[test]
fn synth_tokenizer_loads_with_control_tokens_last() {
    let tok = Tokenizer::from_gguf(&gguf(&small(GgmlType::TQ2_0, GgmlType::F16))).unwrap();
    assert_eq!(tok.vocab_size(), 300);
    assert_eq!((tok.bos(), tok.eos(), tok.eot()), (Some(297), Some(298), Some(299)));
    assert!(tok.add_bos());
    let text = "a bad cab, 42!\n";
    let ids = tok.encode_text(text);
    assert!(ids.len() < text.len(), "merges apply: {ids:?}");
    assert!(ids.iter().all(|&id| id < 297));
    assert_eq!(tok.decode(&ids), text);
}

#[test]
fn synth_presets_have_their_models_shapes() {
    let big = SynthSpec::preset("bitnet-2b-4t").unwrap();
    big.check().unwrap();
    assert_eq!((big.n_vocab, big.n_embd, big.n_layer, big.n_ff, big.head_dim()), (128_256, 2560, 30, 6912, 128));
    let keys: Vec<String> = big.metadata().into_iter().map(|(k, _)| k).collect();
    for key in [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "rope.freq_base",
        "rope.dimension_count",
        "attention.layer_norm_rms_epsilon",
    ] {
        assert!(keys.contains(&format!("bitnet.{key}")), "bitnet.{key}");
    }
    assert!(SynthSpec::preset("llama-70b").is_none());
    for name in synth::PRESETS {
        assert!(SynthSpec::preset(name).is_some(), "{name}");
    }

    let tiny = SynthSpec { ternary: GgmlType::I2_S, head: GgmlType::Q8_0, ..SynthSpec::preset("tern-tiny").unwrap() };
    let model = Model::load(&gguf(&tiny), &LoadOptions::default()).unwrap();
    assert_eq!((model.config().n_vocab, model.config().n_layer, model.config().n_ff), (2048, 6, 768));
}

#[test]
fn synth_refuses_shapes_its_formats_cannot_hold() {
    let bad_ff = SynthSpec { n_ff: 384, ..small(GgmlType::TQ2_0, GgmlType::F16) };
    assert!(bad_ff.check().is_err());
    assert!(synth::write(&bad_ff, Vec::new(), |_| {}).is_err());
    assert!(SynthSpec { n_ff: 384, ..small(GgmlType::I2_S, GgmlType::F16) }.check().is_ok());
    assert!(SynthSpec { n_head_kv: 3, ..small(GgmlType::TQ2_0, GgmlType::F16) }.check().is_err());
    assert!(SynthSpec { head: GgmlType::TQ2_0, ..small(GgmlType::TQ2_0, GgmlType::F16) }.check().is_err());
    assert!(SynthSpec { ternary: GgmlType::F16, ..small(GgmlType::TQ2_0, GgmlType::F16) }.check().is_err());
    assert!(SynthSpec { n_vocab: 200, ..small(GgmlType::TQ2_0, GgmlType::F16) }.check().is_err());
}

//! Hugging Face checkpoints: the bundled model written out as transformers'
//! BitNet folders (packed ternary weights with either scale convention, and
//! bf16 master weights) loads to the same model as its GGUF.

use std::path::{Path, PathBuf};

use safetensors::{serialize_to_file, tensor::TensorView, Dtype};
use serde_json::json;
use tern_engine::gguf::{GgmlType, GgufFile};
use tern_engine::model::{LoadOptions, Session};
use tern_engine::LoadedModel;
use tern_kernels::f16;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// A TQ2_0 matrix's ternary values (row-major) and its one block scale.
fn ternary(g: &GgufFile, name: &str) -> (Vec<i8>, f32, usize, usize) {
    let t = g.tensor(name).unwrap();
    assert_eq!(t.ggml_type, GgmlType::TQ2_0);
    let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
    let mut values = Vec::with_capacity(rows * cols);
    let mut scale = 0.0f32;
    for block in g.tensor_data(name).unwrap().chunks_exact(66) {
        let d = f16::from_le_bytes([block[64], block[65]]).to_f32();
        if d != 0.0 {
            assert!(scale == 0.0 || scale == d, "one scale per tensor");
            scale = d;
        }
        for e in 0..256 {
            let code = (block[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
            values.push(code as i8 - 1);
        }
    }
    (values, scale, rows, cols)
}

/// transformers' packing: row r of block i = r / (rows / 4) at bits 2i.
fn pack(values: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    let quarter = rows / 4;
    let mut out = vec![0u8; quarter * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[(r % quarter) * cols + c] |= ((values[r * cols + c] + 1) as u8) << (2 * (r / quarter));
        }
    }
    out
}

fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    // Round to nearest even, as torch does.
    let round = |v: f32| (v.to_bits().wrapping_add(0x7FFF + ((v.to_bits() >> 16) & 1)) >> 16) as u16;
    values.iter().flat_map(|&v| round(v).to_le_bytes()).collect()
}

enum Form {
    Packed { linear_class: &'static str },
    Master,
}

/// Writes the bundled model as a checkpoint folder in `form`.
fn write_checkpoint(dir: &Path, form: Form) {
    let g = GgufFile::open(&models().join("tern-tiny.gguf")).unwrap();
    let arch = "bitnet-b1.58";
    let u = |k: &str| g.get(&format!("{arch}.{k}")).and_then(|v| v.as_u64()).unwrap();
    let f = |k: &str| g.get(&format!("{arch}.{k}")).and_then(|v| v.as_f32()).unwrap();
    let layers = u("block_count") as usize;
    let mut config = json!({
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2",
        "hidden_size": u("embedding_length"), "intermediate_size": u("feed_forward_length"),
        "num_hidden_layers": layers, "num_attention_heads": u("attention.head_count"),
        "num_key_value_heads": u("attention.head_count_kv"), "max_position_embeddings": u("context_length"),
        "vocab_size": u("vocab_size"), "rms_norm_eps": f("attention.layer_norm_rms_epsilon"),
        "rope_theta": f("rope.freq_base"), "tie_word_embeddings": true,
    });
    if let Form::Packed { linear_class } = form {
        config["quantization_config"] =
            json!({"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline"});
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(models().join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).unwrap();
    let tokens = |key: &str| {
        let id = g.get(key).and_then(|v| v.as_u64()).unwrap() as usize;
        match g.get("tokenizer.ggml.tokens") {
            Some(tern_engine::gguf::Value::Array(list)) => list[id].as_str().unwrap().to_string(),
            _ => panic!("no token list"),
        }
    };
    let tok_config = json!({"chat_template": template, "bos_token": tokens("tokenizer.ggml.bos_token_id"),
        "eos_token": {"content": tokens("tokenizer.ggml.eos_token_id")}, "add_bos_token": true});
    std::fs::write(dir.join("tokenizer_config.json"), tok_config.to_string()).unwrap();

    // (name, dtype, shape, bytes)
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let embd = g.tensor("token_embd.weight").unwrap();
    let shape = vec![embd.dims[1] as usize, embd.dims[0] as usize];
    tensors.push((
        "model.embed_tokens.weight".into(),
        Dtype::F16,
        shape,
        g.tensor_data("token_embd.weight").unwrap().to_vec(),
    ));
    let vector = |name: &str| {
        let t = g.tensor(name).unwrap();
        assert_eq!(t.ggml_type, GgmlType::F32);
        (vec![t.dims[0] as usize], g.tensor_data(name).unwrap().to_vec())
    };
    let (s, b) = vector("output_norm.weight");
    tensors.push(("model.norm.weight".into(), Dtype::F32, s, b));
    let norms = [
        ("attn_norm", "input_layernorm"),
        ("attn_sub_norm", "self_attn.attn_sub_norm"),
        ("ffn_norm", "post_attention_layernorm"),
        ("ffn_sub_norm", "mlp.ffn_sub_norm"),
    ];
    let projections = [
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ];
    for i in 0..layers {
        for (ours, theirs) in norms {
            let (s, b) = vector(&format!("blk.{i}.{ours}.weight"));
            tensors.push((format!("model.layers.{i}.{theirs}.weight"), Dtype::F32, s, b));
        }
        for (ours, theirs) in projections {
            let (values, scale, rows, cols) = ternary(&g, &format!("blk.{i}.{ours}.weight"));
            let name = format!("model.layers.{i}.{theirs}.weight");
            match form {
                Form::Packed { linear_class } => {
                    tensors.push((name.clone(), Dtype::U8, vec![rows / 4, cols], pack(&values, rows, cols)));
                    let s = if linear_class == "bitlinear" { 1.0 / scale } else { scale };
                    tensors.push((
                        name.replace(".weight", ".weight_scale"),
                        Dtype::F32,
                        vec![1],
                        s.to_le_bytes().to_vec(),
                    ));
                }
                Form::Master => {
                    // Master weights whose absmean quantisation gives back these values and scale.
                    let mean = values.iter().map(|v| f32::from(v.abs())).sum::<f32>() / values.len() as f32;
                    let w: Vec<f32> = values.iter().map(|&v| f32::from(v) * scale / mean).collect();
                    tensors.push((name, Dtype::BF16, vec![rows, cols], bf16_bytes(&w)));
                }
            }
        }
    }
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn logits(m: &LoadedModel, tokens: &[u32]) -> Vec<f32> {
    Session::new(&m.model).forward(tokens, true)
}

#[test]
fn a_checkpoint_folder_is_the_same_model_as_its_gguf() {
    let options = LoadOptions::default();
    let gguf = LoadedModel::load(&models().join("tern-tiny.gguf"), None, &options).unwrap();
    let prompt = gguf.tokenizer.encode_text("To be, or not to be, that is the question");
    let want = logits(&gguf, &prompt);
    let tmp = std::env::temp_dir().join(format!("tern-hf-{}", std::process::id()));
    for (form, exact) in [
        (Form::Packed { linear_class: "autobitlinear" }, true),
        (Form::Packed { linear_class: "bitlinear" }, true),
        (Form::Master, false),
    ] {
        let dir = tmp.join(match form {
            Form::Packed { linear_class } => linear_class,
            Form::Master => "master",
        });
        write_checkpoint(&dir, form);
        let hf = LoadedModel::load(&dir, None, &options).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hf.model.config().n_layer, gguf.model.config().n_layer);
        assert_eq!(hf.tokenizer.encode_text("To be, or not to be, that is the question"), prompt);
        let chat = [tern_engine::tokenizer::ChatMessage { role: "user", content: "Hi" }];
        assert_eq!(hf.tokenizer.encode_chat(&chat, true).unwrap(), gguf.tokenizer.encode_chat(&chat, true).unwrap());
        let got = logits(&hf, &prompt);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{}: max |Δlogit| {worst:.2e}", dir.display());
        if exact {
            assert_eq!(got, want, "packed ternary weights give bit-identical logits");
        } else {
            // bf16 moves each absmean scale by up to 2^-8 of itself, which can
            // move an int8 activation code by one: the tolerance the bundled
            // model's test allows between independent implementations.
            assert!(worst < 0.15, "{worst}");
            let vocab = gguf.model.config().n_vocab;
            let last = |l: &[f32]| tern_engine::sampler::argmax(&l[l.len() - vocab..]);
            assert_eq!(last(&got), last(&want), "the same next token");
        }
    }
    if std::env::var_os("TERN_KEEP_CHECKPOINTS").is_none() {
        std::fs::remove_dir_all(&tmp).ok();
    }
}

#[test]
fn a_broken_checkpoint_says_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("tern-hf-broken-{}", std::process::id()));
    write_checkpoint(&dir, Form::Packed { linear_class: "autobitlinear" });
    let options = LoadOptions::default();
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config.replace("relu2", "gelu")).unwrap();
    let err = LoadedModel::load(&dir, None, &options).err().unwrap();
    assert!(err.contains("gelu"), "{err}");
    std::fs::write(dir.join("config.json"), config.replace("autobitlinear", "fancylinear")).unwrap();
    assert!(LoadedModel::load(&dir, None, &options).err().unwrap().contains("fancylinear"));
    std::fs::write(dir.join("config.json"), &config).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(LoadedModel::load(&dir, None, &options).err().unwrap().contains("no *.safetensors"));
    std::fs::remove_dir_all(&dir).ok();
}

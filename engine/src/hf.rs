//! Hugging Face checkpoints: a folder with `config.json`, `tokenizer.json`,
//! `tokenizer_config.json` (special tokens and the chat template) and
//! `*.safetensors`, read into the same in-memory form a GGUF file gives, so
//! the one loader repacks both.
//!
//! Ternary projections come in either of the two forms BitNet checkpoints
//! are published in:
//! - packed: `uint8`, four codes (value + 1) per byte, the row blocks of a
//!   quarter of the rows each in successive bit pairs, with a per-tensor
//!   `weight_scale`. `quantization_config.linear_class` says how the scale
//!   applies: `autobitlinear` multiplies, `bitlinear` (the default) divides.
//!   They become TQ2_0 with unit block scales and the scale kept apart,
//!   so no precision is lost;
//! - master weights (`bfloat16`, `float16` or `float32`), ternarised at load
//!   by absmean as training did.
//!
//! Names follow transformers' BitNet model (`model.layers.N.self_attn.q_proj`,
//! `…attn_sub_norm`, `…mlp.ffn_sub_norm`, …); `hidden_act` `relu2` is
//! BitNet b1.58 and `silu` the gated variant.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;

use crate::gguf::{GgmlType, GgufFile, Value};
use crate::tokenizer::{JsonOptions, Tokenizer};
use tern_kernels::f16;

/// Whether `path` is a checkpoint folder rather than a GGUF file.
pub fn is_checkpoint(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// The folder's weights as an in-memory GGUF, and its tokenizer.
pub fn load(dir: &Path) -> Result<(GgufFile, Tokenizer), String> {
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let config: Json = serde_json::from_slice(&read("config.json")?).map_err(|e| format!("config.json: {e}"))?;
    let name = dir.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let mut file = metadata(&config, &name)?;
    let linear = config.pointer("/quantization_config/linear_class").and_then(Json::as_str).unwrap_or("bitlinear");
    let divide = match linear {
        "bitlinear" => true,
        "autobitlinear" => false,
        other => return Err(format!("config.json: quantization_config.linear_class `{other}` is not known")),
    };
    let mut shards: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(format!("{}: no *.safetensors files", dir.display()));
    }
    let mut seen = 0;
    for shard in &shards {
        let io = |e: std::io::Error| format!("{}: {e}", shard.display());
        // Mapped, not read: the tensors are copied once, into the GGUF form.
        // SAFETY: read-only; a checkpoint rewritten while it loads is outside
        // what the server supports, as for GGUF files.
        let bytes = unsafe { memmap2::Mmap::map(&std::fs::File::open(shard).map_err(io)?) }.map_err(io)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", shard.display()))?;
        for (hf_name, view) in st.tensors() {
            // Scales travel with their matrix; rotary tables are recomputed.
            if hf_name.ends_with(".weight_scale") || hf_name.contains("rotary_emb") {
                continue;
            }
            let Some(name) = gguf_name(&hf_name) else {
                return Err(format!("{}: tensor `{hf_name}` is not part of a BitNet model", shard.display()));
            };
            let scale_name = hf_name.replace(".weight", ".weight_scale");
            let scale = match st.tensor(&scale_name) {
                Ok(s) => Some(scalar(&s).ok_or_else(|| format!("`{scale_name}` is not one number"))?),
                Err(_) => None,
            };
            add(&mut file, &name, &hf_name, &view, scale, divide)?;
            seen += 1;
        }
    }
    if seen == 0 {
        return Err(format!("{}: the checkpoint holds no tensors", dir.display()));
    }
    Ok((file, tokenizer(dir)?))
}

/// The model's hyper-parameters under GGUF's keys.
fn metadata(config: &Json, name: &str) -> Result<GgufFile, String> {
    let u =
        |key: &str| config.get(key).and_then(Json::as_u64).ok_or_else(|| format!("config.json: `{key}` is missing"));
    let arch = match config.get("hidden_act").and_then(Json::as_str).unwrap_or("relu2") {
        "relu2" => "bitnet-b1.58",
        "silu" => "bitnet",
        other => return Err(format!("config.json: hidden_act `{other}` is not a BitNet activation")),
    };
    let heads = u("num_attention_heads")?;
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("general.architecture", Value::String(arch.into()));
    put("general.name", Value::String(name.into()));
    let key = |k: &str| format!("{arch}.{k}");
    put(&key("embedding_length"), Value::U32(u("hidden_size")? as u32));
    put(&key("feed_forward_length"), Value::U32(u("intermediate_size")? as u32));
    put(&key("block_count"), Value::U32(u("num_hidden_layers")? as u32));
    put(&key("attention.head_count"), Value::U32(heads as u32));
    put(
        &key("attention.head_count_kv"),
        Value::U32(config.get("num_key_value_heads").and_then(Json::as_u64).unwrap_or(heads) as u32),
    );
    put(&key("context_length"), Value::U32(u("max_position_embeddings")? as u32));
    put(&key("vocab_size"), Value::U32(u("vocab_size")? as u32));
    if let Some(hd) = config.get("head_dim").and_then(Json::as_u64) {
        put(&key("attention.key_length"), Value::U32(hd as u32));
    }
    if let Some(theta) = config.get("rope_theta").and_then(Json::as_f64) {
        put(&key("rope.freq_base"), Value::F32(theta as f32));
    }
    if let Some(eps) = config.get("rms_norm_eps").and_then(Json::as_f64) {
        put(&key("attention.layer_norm_rms_epsilon"), Value::F32(eps as f32));
    }
    Ok(GgufFile::from_metadata(m))
}

/// The GGUF name of a transformers BitNet tensor.
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let ours = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.attn_sub_norm.weight" => "attn_sub_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "mlp.ffn_sub_norm.weight" => "ffn_sub_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{ours}"))
}

/// The single number a scale tensor holds.
fn scalar(view: &safetensors::tensor::TensorView<'_>) -> Option<f32> {
    match floats(view.dtype(), view.data())?[..] {
        [v] => Some(v),
        _ => None,
    }
}

/// Adds one tensor: vectors as F32, matrices in their own float type, and
/// packed ternary matrices as TQ2_0 with their scale apart.
fn add(
    file: &mut GgufFile,
    name: &str,
    hf_name: &str,
    view: &safetensors::tensor::TensorView<'_>,
    scale: Option<f32>,
    divide: bool,
) -> Result<(), String> {
    let bad = |why: String| format!("tensor `{hf_name}`: {why}");
    let shape = view.shape();
    let data = view.data();
    // GGUF lists the contiguous dimension first.
    let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
    let result = match (view.dtype(), shape.len()) {
        (Dtype::U8, 2) => {
            let scale = scale.ok_or_else(|| bad("a packed matrix needs its `weight_scale`".into()))?;
            let (packed_rows, cols) = (shape[0], shape[1]);
            let rows = packed_rows * 4;
            let tq = tq2_0_of_packed(data, packed_rows, cols).map_err(bad)?;
            file.add_tensor(name, GgmlType::TQ2_0, vec![cols as u64, rows as u64], &tq).and_then(|()| {
                let s = if divide { 1.0 / scale } else { scale };
                let scale_name = name.replace(".weight", ".scale");
                file.add_tensor(&scale_name, GgmlType::F32, vec![1], &s.to_le_bytes())
            })
        }
        (dtype, 1) => {
            let values = floats(dtype, data).ok_or_else(|| bad(format!("{dtype:?} is not a float type")))?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            file.add_tensor(name, GgmlType::F32, dims, &bytes)
        }
        (Dtype::BF16, _) => file.add_tensor(name, GgmlType::BF16, dims, data),
        (Dtype::F16, _) => file.add_tensor(name, GgmlType::F16, dims, data),
        (Dtype::F32, _) => file.add_tensor(name, GgmlType::F32, dims, data),
        (dtype, _) => return Err(bad(format!("{dtype:?} with shape {shape:?} is not supported"))),
    };
    result.map_err(|e| bad(e.to_string()))
}

fn floats(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => {
            data.chunks_exact(2).map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)).collect()
        }
        _ => return None,
    })
}

/// TQ2_0 blocks (unit scale) of a packed matrix: `packed_rows` rows of
/// `cols` bytes, code `c` of row `r` at bits `2i` of packed row
/// `r - i * packed_rows`.
fn tq2_0_of_packed(packed: &[u8], packed_rows: usize, cols: usize) -> Result<Vec<u8>, String> {
    const BLOCK: usize = 256;
    if packed.len() != packed_rows * cols || !cols.is_multiple_of(BLOCK) {
        return Err(format!("{packed_rows} x {cols} packed bytes do not make TQ2_0 rows of 256-element blocks"));
    }
    let rows = packed_rows * 4;
    let blocks = cols / BLOCK;
    let one = f16::from_f32(1.0).to_le_bytes();
    let mut out = Vec::with_capacity(rows * blocks * (BLOCK / 4 + 2));
    for r in 0..rows {
        let (i, p) = (r / packed_rows, r % packed_rows);
        let row = &packed[p * cols..(p + 1) * cols];
        for b in 0..blocks {
            let mut qs = [0u8; BLOCK / 4];
            for e in 0..BLOCK {
                let code = (row[b * BLOCK + e] >> (2 * i)) & 3;
                if code == 3 {
                    return Err(format!("row {r} holds code 3, which is no ternary value"));
                }
                // TQ2_0: element e of a block sits in byte (e / 128) * 32 + e % 32,
                // bits 2 * ((e % 128) / 32).
                qs[(e / 128) * 32 + e % 32] |= code << (2 * ((e % 128) / 32));
            }
            out.extend_from_slice(&qs);
            out.extend_from_slice(&one);
        }
    }
    Ok(out)
}

/// `tokenizer.json` with `tokenizer_config.json`'s special tokens and chat
/// template.
fn tokenizer(dir: &Path) -> Result<Tokenizer, String> {
    let json = std::fs::read(dir.join("tokenizer.json")).map_err(|e| format!("tokenizer.json: {e}"))?;
    let config: Json = match std::fs::read(dir.join("tokenizer_config.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("tokenizer_config.json: {e}"))?,
        Err(_) => Json::Null,
    };
    // A special token is a string or `{"content": …}`.
    let token = |key: &str| match config.get(key) {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    };
    let options = JsonOptions {
        chat_template: config.get("chat_template").and_then(Json::as_str).map(str::to_string),
        bos_token: token("bos_token"),
        eos_token: token("eos_token"),
        eot_token: None,
        add_bos: config.get("add_bos_token").and_then(Json::as_bool),
    };
    Tokenizer::from_json_bytes(&json, options).map_err(|e| format!("tokenizer.json: {e}"))
}

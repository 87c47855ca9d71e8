//! Synthetic BitNet b1.58 models: a known model's shapes with random ternary
//! weights, for benchmarks that need a full-size file without its download.
//!
//! 1. A [`SynthSpec`] names the shapes ([`SynthSpec::preset`]: `bitnet-2b-4t`,
//!    `tern-tiny`), the ternary format (TQ2_0, TQ1_0 or I2_S), the head format
//!    (F16 or Q8_0) and a seed.
//! 2. [`write`] streams a GGUF of architecture `bitnet` (mainline llama.cpp's
//!    naming, so llama.cpp loads the same file) through
//!    [`crate::gguf_writer::GgufWriter`], producing each tensor's bytes just
//!    before they are written: a 2B-4T-shaped file is 1.2 GB, memory stays at
//!    a few MB.
//!
//! The weights are uniform over {-1, 0, +1} with one scale per tensor, drawn
//! from a generator seeded by the seed and the tensor's name, so the TQ2_0,
//! TQ1_0 and I2_S files of one seed hold the same model (and give the same
//! logits), and changing the layer count leaves the other tensors alone. The
//! tokenizer is a byte-level BPE whose merges spell lowercase words, padded
//! with filler tokens to the vocabulary size, with the control tokens last.
//!
//! ```no_run
//! use tern_tools::synth::{self, SynthSpec};
//!
//! let spec = SynthSpec::preset("tern-tiny").expect("a preset");
//! let out = std::io::BufWriter::new(std::fs::File::create("tiny-synth.gguf")?);
//! synth::write(&spec, out, |p| eprintln!("{}/{} {} bytes", p.tensor + 1, p.n_tensors, p.written))?;
//! # Ok::<(), synth::SynthError>(())
//! ```

use std::io::{self, Write};

use half::{f16, slice::HalfFloatSliceExt as _};
use tern_engine::gguf::{GgmlType, Value};
use tern_engine::tokenizer::gpt2_byte_to_char;
use tern_kernels::{I2S_BLOCK, Q8_0_BLOCK, TQ_BLOCK};

use crate::gguf_writer::{GgufWriter, TensorDesc};

/// Names accepted by [`SynthSpec::preset`].
pub const PRESETS: &[&str] = &["bitnet-2b-4t", "tern-tiny"];

const ARCH: &str = "bitnet";
const RMS_EPS: f32 = 1e-5;
/// Standard deviation of the embedding (and tied head) weights.
const EMBD_STD: f32 = 0.02;
/// Standard deviation of the noise around 1 in the norm weights.
const NORM_NOISE: f32 = 0.02;
/// Output bytes produced per piece of a large tensor.
const PIECE_BYTES: usize = 1 << 20;
/// Bytes after the codes of an I2_S tensor: its f32 scale and padding.
const I2S_TRAILER: usize = 32;
/// Control tokens, last in the vocabulary: begin of text, end of text, end of turn.
const SPECIAL_TOKENS: [&str; 3] = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"];
/// GGUF `tokenizer.ggml.token_type` values.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;

/// Why a synthetic model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid synthetic model: {0}")]
    Spec(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Shapes, formats and seed of a synthetic model.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSpec {
    /// `general.name`.
    pub name: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub n_ctx: usize,
    pub rope_theta: f32,
    /// Format of the seven projections of every layer: TQ2_0, TQ1_0 or I2_S.
    pub ternary: GgmlType,
    /// Format of `token_embd.weight`, which is also the output head: F16 or Q8_0.
    pub head: GgmlType,
    pub seed: u64,
}

impl SynthSpec {
    /// The shapes of a known model, with TQ2_0 projections, an F16 head and seed 1.
    ///
    /// - `bitnet-2b-4t`: microsoft/bitnet-b1.58-2B-4T (2.4 G weights).
    /// - `tern-tiny`: the bundled `models/tern-tiny.gguf`.
    pub fn preset(name: &str) -> Option<Self> {
        let base = |n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, rope_theta| Self {
            name: format!("{name}-synth"),
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            n_ff,
            n_ctx,
            rope_theta,
            ternary: GgmlType::TQ2_0,
            head: GgmlType::F16,
            seed: 1,
        };
        match name {
            "bitnet-2b-4t" => Some(base(128_256, 2560, 30, 20, 5, 6912, 4096, 500_000.0)),
            "tern-tiny" => Some(base(2048, 256, 6, 4, 2, 768, 512, 10_000.0)),
            _ => None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// Checks that every tensor can be stored in the chosen formats and that
    /// the vocabulary has room for the byte tokens and the control tokens.
    pub fn check(&self) -> Result<(), SynthError> {
        let fail = |msg: String| Err(SynthError::Spec(msg));
        let block = match self.ternary {
            GgmlType::TQ2_0 | GgmlType::TQ1_0 => TQ_BLOCK,
            GgmlType::I2_S => I2S_BLOCK,
            other => return fail(format!("ternary format {other} (expected TQ2_0, TQ1_0 or I2_S)")),
        };
        match self.head {
            GgmlType::F16 => {}
            GgmlType::Q8_0 if self.n_embd.is_multiple_of(Q8_0_BLOCK) => {}
            GgmlType::Q8_0 => return fail(format!("a Q8_0 head needs a width that is a multiple of {Q8_0_BLOCK}")),
            other => return fail(format!("head format {other} (expected F16 or Q8_0)")),
        }
        if self.n_head == 0 || self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            return fail(format!("{} heads cannot share {} kv heads", self.n_head, self.n_head_kv));
        }
        if !self.n_embd.is_multiple_of(self.n_head) || !self.head_dim().is_multiple_of(2) {
            return fail(format!("width {} does not split into {} heads of even size", self.n_embd, self.n_head));
        }
        for (what, cols) in [("width", self.n_embd), ("feed-forward width", self.n_ff)] {
            if cols == 0 || !cols.is_multiple_of(block) {
                return fail(format!("{what} {cols} is not a multiple of {block}, the {} block", self.ternary));
            }
        }
        if self.n_vocab < 256 + SPECIAL_TOKENS.len() {
            return fail(format!("{} tokens cannot hold 256 byte tokens and the control tokens", self.n_vocab));
        }
        if self.n_layer == 0 || self.n_ctx == 0 {
            return fail("at least one layer and one position of context are needed".into());
        }
        Ok(())
    }

    /// The GGUF metadata: hyper-parameters under `bitnet.*` and the tokenizer.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let u32_of = |n: usize| Value::U32(n as u32);
        let key = |k: &str| format!("{ARCH}.{k}");
        let vocab = Vocabulary::new(self.n_vocab);
        let first_special = (self.n_vocab - SPECIAL_TOKENS.len()) as u32;
        vec![
            ("general.architecture".into(), Value::String(ARCH.into())),
            ("general.name".into(), Value::String(self.name.clone())),
            (key("context_length"), u32_of(self.n_ctx)),
            (key("embedding_length"), u32_of(self.n_embd)),
            (key("block_count"), u32_of(self.n_layer)),
            (key("feed_forward_length"), u32_of(self.n_ff)),
            (key("attention.head_count"), u32_of(self.n_head)),
            (key("attention.head_count_kv"), u32_of(self.n_head_kv)),
            (key("rope.freq_base"), Value::F32(self.rope_theta)),
            (key("rope.dimension_count"), u32_of(self.head_dim())),
            (key("attention.layer_norm_rms_epsilon"), Value::F32(RMS_EPS)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("llama-bpe".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(vocab.tokens.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(vocab.types.into_iter().map(Value::I32).collect())),
            ("tokenizer.ggml.merges".into(), Value::Array(vocab.merges.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(first_special)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(first_special + 1)),
            ("tokenizer.ggml.eot_token_id".into(), Value::U32(first_special + 2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ]
    }

    /// Every tensor in file order, with what fills it.
    fn plan(&self) -> Vec<(TensorDesc, Fill)> {
        let (d, ff, kv) = (self.n_embd, self.n_ff, self.n_head_kv * self.head_dim());
        let desc = |name: &str, dims: &[usize], ty: GgmlType| {
            let dims: Vec<u64> = dims.iter().map(|&n| n as u64).collect();
            TensorDesc::new(name, &dims, ty).expect("check() accepted the shapes")
        };
        let mut plan = vec![(desc("token_embd.weight", &[d, self.n_vocab], self.head), Fill::Embedding)];
        for i in 0..self.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            let norm = |n: &str, len: usize| (desc(&p(n), &[len], GgmlType::F32), Fill::Norm);
            let ternary = |n: &str, rows: usize, cols: usize| (desc(&p(n), &[cols, rows], self.ternary), Fill::Ternary);
            plan.extend([
                norm("attn_norm", d),
                ternary("attn_q", d, d),
                ternary("attn_k", kv, d),
                ternary("attn_v", kv, d),
                ternary("attn_output", d, d),
                norm("attn_sub_norm", d),
                norm("ffn_norm", d),
                ternary("ffn_gate", ff, d),
                ternary("ffn_up", ff, d),
                ternary("ffn_down", d, ff),
                norm("ffn_sub_norm", ff),
            ]);
        }
        plan.push((desc("output_norm.weight", &[d], GgmlType::F32), Fill::Norm));
        plan
    }
}

/// What a tensor holds.
#[derive(Clone, Copy)]
enum Fill {
    /// F32 ones plus a little noise.
    Norm,
    /// Uniform {-1, 0, +1} with one scale for the tensor.
    Ternary,
    /// Normal(0, EMBD_STD) in the head's format.
    Embedding,
}

/// How far [`write`] has come, reported after every piece it writes.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// Index of the tensor being written.
    pub tensor: usize,
    pub n_tensors: usize,
    pub name: &'a str,
    /// Bytes written so far, and the size of the finished file.
    pub written: u64,
    pub total: u64,
}

/// Writes the synthetic model described by `spec` to `out`, calling
/// `progress` after every piece, and returns `out` flushed.
pub fn write<W: Write>(spec: &SynthSpec, out: W, mut progress: impl FnMut(&Progress)) -> Result<W, SynthError> {
    spec.check()?;
    let plan = spec.plan();
    let descs = plan.iter().map(|(d, _)| d.clone()).collect();
    let mut w = GgufWriter::new(out, &spec.metadata(), descs)?;
    let (n_tensors, total) = (plan.len(), w.file_size());
    let mut piece = Vec::with_capacity(PIECE_BYTES + TQ_BLOCK);
    for (i, (desc, fill)) in plan.iter().enumerate() {
        let mut rng = SplitMix64::new(spec.seed ^ fnv1a(desc.name.as_bytes()));
        // ne0 is the row length; the rest are rows.
        let cols = desc.dims[0] as usize;
        let rows = desc.dims[1..].iter().product::<u64>() as usize;
        let rows_per_piece = (PIECE_BYTES / cols).max(1);
        let mut report = |w: &GgufWriter<W>| {
            progress(&Progress { tensor: i, n_tensors, name: &desc.name, written: w.written(), total })
        };
        match fill {
            Fill::Norm => {
                let values: Vec<f32> = (0..cols).map(|_| 1.0 + NORM_NOISE * rng.normal()).collect();
                w.write_tensor(&values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
                report(&w);
            }
            Fill::Ternary => {
                let scale = ternary_scale(cols, &mut rng);
                let mut codes = vec![0u8; rows_per_piece * cols];
                for first in (0..rows).step_by(rows_per_piece) {
                    let n = rows_per_piece.min(rows - first);
                    let codes = &mut codes[..n * cols];
                    rng.fill_trits(codes);
                    piece.clear();
                    match desc.ggml_type {
                        GgmlType::TQ2_0 => encode_tq2_0(codes, scale, &mut piece),
                        GgmlType::TQ1_0 => encode_tq1_0(codes, scale, &mut piece),
                        GgmlType::I2_S => encode_i2_s(codes, &mut piece),
                        other => unreachable!("check() refuses ternary format {other}"),
                    }
                    if desc.ggml_type == GgmlType::I2_S && first + n == rows {
                        piece.extend_from_slice(&scale.to_f32().to_le_bytes());
                        piece.resize(piece.len() + I2S_TRAILER - 4, 0);
                    }
                    w.write_tensor_part(&piece)?;
                    report(&w);
                }
            }
            Fill::Embedding => {
                let mut values = vec![0f32; rows_per_piece * cols];
                let mut halves = Vec::new();
                for first in (0..rows).step_by(rows_per_piece) {
                    let n = rows_per_piece.min(rows - first);
                    let values = &mut values[..n * cols];
                    rng.fill_normal(EMBD_STD, values);
                    piece.clear();
                    match desc.ggml_type {
                        GgmlType::F16 => {
                            // The slice conversion uses F16C where the CPU has it.
                            halves.resize(values.len(), f16::ZERO);
                            halves.convert_from_f32_slice(values);
                            piece.extend(halves.iter().flat_map(|h| h.to_le_bytes()));
                        }
                        GgmlType::Q8_0 => encode_q8_0(values, &mut piece),
                        other => unreachable!("check() refuses head format {other}"),
                    }
                    w.write_tensor_part(&piece)?;
                    report(&w);
                }
            }
        }
    }
    Ok(w.finish()?)
}

/// A scale that keeps activations near unit size: a row of `cols` uniform
/// ternary weights has 2/3 non-zero, so its dot product with a unit vector
/// grows as sqrt(2 cols / 3). Jittered per tensor, and exact in f16 so every
/// format stores the same value (TQ blocks hold f16, I2_S an f32).
fn ternary_scale(cols: usize, rng: &mut SplitMix64) -> f16 {
    let jitter = 0.8 + 0.4 * rng.unit() as f32;
    f16::from_f32(jitter / (2.0 * cols as f32 / 3.0).sqrt())
}

/// TQ2_0, per 256 codes (0, 1, 2 for -1, 0, +1): `qs[64]` where element
/// `128g + 32l + m` sits at bits `2l..2l+1` of byte `32g + m`, then `d: f16`.
fn encode_tq2_0(codes: &[u8], d: f16, out: &mut Vec<u8>) {
    for block in codes.chunks_exact(TQ_BLOCK) {
        for half in block.chunks_exact(128) {
            out.extend((0..32).map(|m| half[m] | half[32 + m] << 2 | half[64 + m] << 4 | half[96 + m] << 6));
        }
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// TQ1_0, per 256 codes: `qs[48]`, `qh[4]`, `d: f16`. A byte holds five
/// trits, most significant first, as the base-3 number scaled to 256 and
/// rounded up (`ceil(v * 256 / 243)`); `qh` bytes hold four, shifted up one
/// trit. `qs[0..32]` hold elements `m + 32n`, `qs[32..48]` hold
/// `160 + m + 16n`, `qh` holds `240 + m + 4n`.
fn encode_tq1_0(codes: &[u8], d: f16, out: &mut Vec<u8>) {
    let pack = |trits: &mut dyn Iterator<Item = u8>, shift: u16| {
        let v = trits.fold(0u16, |v, t| v * 3 + u16::from(t)) * shift;
        (v * 256).div_ceil(243) as u8
    };
    for block in codes.chunks_exact(TQ_BLOCK) {
        out.extend((0..32).map(|m| pack(&mut (0..5).map(|n| block[m + 32 * n]), 1)));
        out.extend((0..16).map(|m| pack(&mut (0..5).map(|n| block[160 + m + 16 * n]), 1)));
        out.extend((0..4).map(|m| pack(&mut (0..4).map(|n| block[240 + m + 4 * n]), 3)));
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// bitnet.cpp I2_S codes, per 128 codes: byte `j` holds elements `j`,
/// `32 + j`, `64 + j`, `96 + j` in bits 7:6, 5:4, 3:2, 1:0. The tensor's
/// f32 scale and padding follow the last block (written by the caller).
fn encode_i2_s(codes: &[u8], out: &mut Vec<u8>) {
    for block in codes.chunks_exact(I2S_BLOCK) {
        out.extend((0..32).map(|j| block[j] << 6 | block[32 + j] << 4 | block[64 + j] << 2 | block[96 + j]));
    }
}

/// Q8_0, per 32 values: `d: f16` = absmax / 127, then 32 int8 `round(x / d)`.
fn encode_q8_0(values: &[f32], out: &mut Vec<u8>) {
    for block in values.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * inv).round() as i8 as u8));
    }
}

/// The tokenizer's tables: 256 byte tokens, merge results, fillers, control
/// tokens.
struct Vocabulary {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
}

impl Vocabulary {
    /// Byte tokens in byte order (GPT-2's printable form); then the results
    /// of merges over lowercase letters, with `Ġ` (a space) allowed in front
    /// (pairs first, then pairs followed by a letter), as many as fit; then
    /// unique fillers up to `n_vocab` less the control tokens.
    fn new(n_vocab: usize) -> Self {
        let n_normal = n_vocab - SPECIAL_TOKENS.len();
        let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_byte_to_char(b).to_string()).collect();
        let mut merges = Vec::new();
        let letters: Vec<String> = ('a'..='z').map(String::from).collect();
        let lefts: Vec<String> = std::iter::once("Ġ".to_string()).chain(letters.iter().cloned()).collect();
        let pairs: Vec<String> = lefts.iter().flat_map(|l| letters.iter().map(move |r| format!("{l}{r}"))).collect();
        let candidates = lefts
            .iter()
            .flat_map(|l| letters.iter().map(move |r| (l.clone(), r.clone())))
            .chain(pairs.iter().flat_map(|p| letters.iter().map(move |r| (p.clone(), r.clone()))));
        for (left, right) in candidates.take(n_normal.saturating_sub(tokens.len())) {
            merges.push(format!("{left} {right}"));
            tokens.push(left + &right);
        }
        let n_fillers = n_normal.saturating_sub(tokens.len());
        tokens.extend((0..n_fillers).map(|i| format!("synth_{i}")));
        let mut types = vec![TOKEN_NORMAL; tokens.len()];
        tokens.extend(SPECIAL_TOKENS.iter().map(|s| s.to_string()));
        types.resize(tokens.len(), TOKEN_CONTROL);
        Self { tokens, types, merges }
    }
}

/// SplitMix64 (Steele, Lea and Flood): tiny, fast, and the same stream on
/// every platform and crate version, which a reproducible file needs.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Fills `out` with trits, four from each draw (16 bits each: equal odds
    /// to 2^-16, plenty for random weights and four times faster).
    fn fill_trits(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(4) {
            let r = self.next();
            for (i, t) in chunk.iter_mut().enumerate() {
                *t = ((((r >> (16 * i)) & 0xffff) * 3) >> 16) as u8;
            }
        }
    }

    /// Fills `out` with standard normals scaled by `std`, two per
    /// Box-Muller pair.
    fn fill_normal(&mut self, std: f32, out: &mut [f32]) {
        for pair in out.chunks_mut(2) {
            let (c, s) = self.normal_pair();
            pair[0] = std * c;
            if let Some(x) = pair.get_mut(1) {
                *x = std * s;
            }
        }
    }

    /// Standard normal, by Box-Muller.
    fn normal(&mut self) -> f32 {
        self.normal_pair().0
    }

    /// Two independent standard normals (Box-Muller, in f32: the 2B-4T
    /// embedding needs 328 M of them), from one draw.
    fn normal_pair(&mut self) -> (f32, f32) {
        let bits = self.next();
        let u1 = ((bits >> 40) + 1) as f32 * (1.0 / (1u64 << 24) as f32); // (0, 1]: ln stays finite
        let u2 = (bits & 0xff_ffff) as f32 * (1.0 / (1u64 << 24) as f32);
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
        (r * c, r * s)
    }
}

/// FNV-1a: spreads tensor names into per-tensor seeds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_kernels::TernaryMatrix;

    fn random_codes(rows: usize, cols: usize) -> Vec<u8> {
        let mut rng = SplitMix64::new(7);
        let mut codes = vec![0; rows * cols];
        rng.fill_trits(&mut codes);
        codes
    }

    fn assert_holds(m: &TernaryMatrix, codes: &[u8], cols: usize, scale: f32) {
        assert_eq!(m.tensor_scale(), Some(scale));
        for (i, &c) in codes.iter().enumerate() {
            assert_eq!(m.weight(i / cols, i % cols), c as i8 - 1, "element {i}");
        }
    }

    #[test]
    fn encoders_are_the_inverse_of_the_kernel_readers() {
        let (rows, cols) = (3, 512);
        let codes = random_codes(rows, cols);
        let d = f16::from_f32(0.015625);
        let mut out = Vec::new();
        encode_tq2_0(&codes, d, &mut out);
        assert_holds(&TernaryMatrix::from_tq2_0(&out, rows, cols).unwrap(), &codes, cols, d.to_f32());
        out.clear();
        encode_tq1_0(&codes, d, &mut out);
        assert_holds(&TernaryMatrix::from_tq1_0(&out, rows, cols).unwrap(), &codes, cols, d.to_f32());
        out.clear();
        encode_i2_s(&codes, &mut out);
        out.extend_from_slice(&d.to_f32().to_le_bytes());
        out.resize(out.len() + I2S_TRAILER - 4, 0);
        assert_holds(&TernaryMatrix::from_i2_s(&out, rows, cols).unwrap(), &codes, cols, d.to_f32());
    }

    #[test]
    fn q8_0_encoding_dequantises_within_half_a_step() {
        let mut rng = SplitMix64::new(3);
        let values: Vec<f32> = (0..64).map(|_| EMBD_STD * rng.normal()).collect();
        let mut out = Vec::new();
        encode_q8_0(&values, &mut out);
        let mut row = vec![0f32; 64];
        tern_kernels::row_q8_0(&out, 64, 0, &mut row);
        for (block, got) in values.chunks(32).zip(row.chunks(32)) {
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (v, g) in block.iter().zip(got) {
                assert!((v - g).abs() <= 0.5 * step * 1.01, "{v} vs {g}");
            }
        }
    }

    #[test]
    fn trits_are_balanced_and_normals_are_standard() {
        let mut rng = SplitMix64::new(1);
        let mut counts = [0usize; 3];
        let mut trits = vec![0u8; 30_001]; // not a multiple of 4: the tail is filled too
        rng.fill_trits(&mut trits);
        trits.iter().for_each(|&t| counts[t as usize] += 1);
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
        let mut normals = vec![0f32; 20_001];
        rng.fill_normal(1.0, &mut normals);
        let xs: Vec<f64> = normals.iter().map(|&x| x as f64).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean}, variance {var}");
    }

    #[test]
    fn vocabulary_merges_build_tokens_in_the_vocabulary() {
        let v = Vocabulary::new(2048);
        assert_eq!(v.tokens.len(), 2048);
        assert_eq!(v.merges.len(), 2048 - 256 - 3);
        let known: std::collections::HashSet<&str> = v.tokens.iter().map(String::as_str).collect();
        assert_eq!(known.len(), v.tokens.len(), "tokens are unique");
        for m in &v.merges {
            let (a, b) = m.split_once(' ').unwrap();
            assert!(known.contains(a) && known.contains(b) && known.contains(format!("{a}{b}").as_str()), "{m}");
        }
        assert_eq!(&v.types[2045..], &[TOKEN_CONTROL; 3]);
        assert_eq!(Vocabulary::new(300).merges.len(), 41);
    }
}

//! Text ↔ token ids, over the `tokenizers` crate.
//!
//! 1. A tokenizer comes from a GGUF file's `tokenizer.ggml.*` metadata
//!    ([`Tokenizer::from_gguf`], byte-level BPE) or from a Hugging Face
//!    `tokenizer.json` ([`Tokenizer::from_json_file`]).
//! 2. [`Tokenizer::encode_text`] never turns text into control tokens: a user
//!    who types `<|eot_id|>` gets the characters, not the end of their turn.
//! 3. [`Tokenizer::encode_chat`] renders the chat template and recognises
//!    control tokens only in what the template itself wrote.
//! 4. Output goes back through [`Tokenizer::token_bytes`] and
//!    [`crate::text::Utf8Stream`], so a streamed response never splits a
//!    multi-byte character.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tern_engine::gguf::GgufFile;
//! use tern_engine::text::Utf8Stream;
//! use tern_engine::tokenizer::{ChatMessage, Tokenizer};
//!
//! let gguf = GgufFile::open("model.gguf".as_ref())?;
//! let tok = Tokenizer::from_gguf(&gguf)?;
//! let prompt = tok.encode_chat(&[ChatMessage { role: "user", content: "Hi!" }], true)?;
//! let mut out = Utf8Stream::new();
//! for id in prompt {
//!     print!("{}", out.push(&tok.token_bytes(id)));
//! }
//! print!("{}", out.flush());
//! # Ok(()) }
//! ```

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::NormalizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::gguf::{GgufError, GgufFile, Value};
pub use crate::template::ChatMessage;
use crate::template::{ChatTemplate, ChatTemplateError, DEFAULT_CHAT_TEMPLATE};

/// Llama 3's split pattern: digits in groups of up to three, case-insensitive
/// contractions, newlines kept apart.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's: as Llama 3 but one digit at a time.
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Control tokens that end a turn or a text in common vocabularies.
const END_TOKEN_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
    "<eos>",
];

/// GGUF `tokenizer.ggml.token_type` values.
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
const TOKEN_TYPE_BYTE: i64 = 6;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("invalid tokenizer: {0}")]
    Invalid(String),
    #[error(transparent)]
    Template(#[from] ChatTemplateError),
}

/// How the text of an ordinary vocabulary entry maps to bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceEncoding {
    /// GPT-2 byte-level BPE: every byte is drawn as one printable character.
    ByteLevel,
    /// SentencePiece: `▁` stands for a space.
    Metaspace,
    /// The text is the bytes.
    Raw,
}

/// Settings a `tokenizer.json` does not carry itself (they live in
/// `tokenizer_config.json` next to it).
#[derive(Clone, Debug, Default)]
pub struct JsonOptions {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub eot_token: Option<String>,
    pub add_bos: Option<bool>,
}

/// A tokenizer plus what generation needs around it: special ids, per-token
/// bytes for streaming and the chat template.
pub struct Tokenizer {
    /// Encodes with special-token matching off: the text path.
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    token_bytes: Vec<Vec<u8>>,
    control: Vec<bool>,
    end: Vec<bool>,
    /// Special tokens recognised in template output, longest first.
    specials: Vec<(String, u32)>,
    special_first_bytes: [bool; 256],
    /// The token standing for each byte, where the vocabulary has one.
    byte_tokens: [Option<u32>; 256],
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    bos_text: String,
    eos_text: String,
    /// A template that failed to compile leaves completions working and makes
    /// chat requests fail with the reason.
    template: Result<ChatTemplate, String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// Everything [`Tokenizer::assemble`] needs, whichever source it came from.
struct Parts {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    /// Text of each id (empty where the id is unused).
    texts: Vec<String>,
    /// Ids whose text is emitted literally (control and user-defined tokens).
    literal: Vec<bool>,
    control: Vec<bool>,
    /// Ids holding one raw byte as `<0xAB>`.
    byte_token: Vec<bool>,
    encoding: PieceEncoding,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: Option<bool>,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Build from GGUF `tokenizer.ggml.*` metadata: byte-level BPE
    /// (`tokenizer.ggml.model = "gpt2"`) or SentencePiece BPE (`"llama"`,
    /// with `tokenizer.ggml.scores`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self, TokenizerError> {
        let model = g.str("tokenizer.ggml.model")?;
        if model != "gpt2" && model != "llama" {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.model `{model}` (byte-level BPE, `gpt2`, and SentencePiece, `llama`, are supported)"
            )));
        }
        let tokens = g
            .array("tokenizer.ggml.tokens")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| TokenizerError::Invalid(format!("tokenizer.ggml.tokens[{i}] is not a string")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(TokenizerError::Invalid(format!("vocabulary of {n} tokens")));
        }
        let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(v) => {
                let arr = v
                    .as_array()
                    .ok_or_else(|| TokenizerError::Invalid("tokenizer.ggml.token_type is not an array".into()))?;
                if arr.len() != n {
                    return Err(TokenizerError::Invalid(format!(
                        "tokenizer.ggml.token_type has {} entries for {n} tokens",
                        arr.len()
                    )));
                }
                arr.iter().map(|t| t.as_i64().unwrap_or(1)).collect()
            }
        };
        let merges = match g.get("tokenizer.ggml.merges") {
            None => Vec::new(),
            Some(v) => {
                let arr = v
                    .as_array()
                    .ok_or_else(|| TokenizerError::Invalid("tokenizer.ggml.merges is not an array".into()))?;
                arr.iter()
                    .enumerate()
                    .map(|(i, m)| {
                        m.as_str()
                            .and_then(|s| s.split_once(' '))
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .ok_or_else(|| {
                                TokenizerError::Invalid(format!(
                                    "tokenizer.ggml.merges[{i}] is not two tokens separated by a space"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };

        if model == "llama" {
            return Self::sentencepiece_from_gguf(g, tokens, types);
        }
        let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
        let (pattern, ignore_merges) = match pre {
            "default" | "gpt2" | "gpt-2" => (None, false),
            "llama-bpe" | "llama3" | "smaug-bpe" | "dbrx" | "falcon3" => (Some(LLAMA3_PATTERN), true),
            "qwen2" | "deepseek-r1-qwen" => (Some(QWEN2_PATTERN), false),
            other => {
                tracing::warn!(pre = other, "unknown tokenizer.ggml.pre, splitting text as GPT-2 does");
                (None, false)
            }
        };

        let mut vocab = Vocab::with_capacity(n);
        for (id, text) in tokens.iter().enumerate() {
            // A duplicated string keeps its first id; the later id still decodes.
            vocab.entry(text.clone()).or_insert(id as u32);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| TokenizerError::Invalid(format!("BPE vocabulary: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pattern)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        Self::finish_gguf(g, inner, tokens, &types, PieceEncoding::ByteLevel)
    }

    /// SentencePiece BPE from GGUF: merges are rebuilt from the scores (a
    /// pair merges at the rank of the token it makes, higher scores first,
    /// as SentencePiece picks them), text gets `▁` for spaces and a leading
    /// `▁` (`tokenizer.ggml.add_space_prefix`, default true), and characters
    /// outside the vocabulary fall back to `<0xXX>` byte tokens.
    fn sentencepiece_from_gguf(g: &GgufFile, tokens: Vec<String>, types: Vec<i64>) -> Result<Self, TokenizerError> {
        let scores: Vec<f32> = match g.get("tokenizer.ggml.scores") {
            None => (0..tokens.len()).map(|i| -(i as f32)).collect(),
            Some(v) => {
                let arr = v
                    .as_array()
                    .ok_or_else(|| TokenizerError::Invalid("tokenizer.ggml.scores is not an array".into()))?;
                if arr.len() != tokens.len() {
                    return Err(TokenizerError::Invalid(format!(
                        "tokenizer.ggml.scores has {} entries for {} tokens",
                        arr.len(),
                        tokens.len()
                    )));
                }
                arr.iter().map(|s| s.as_f32().unwrap_or(0.0)).collect()
            }
        };
        let mut vocab = Vocab::with_capacity(tokens.len());
        for (id, text) in tokens.iter().enumerate() {
            vocab.entry(text.clone()).or_insert(id as u32);
        }
        // Every split of a normal token into two tokens is a merge, ranked by
        // the token's score (ties: vocabulary order).
        let mut merges: Vec<(f32, usize, String, String)> = Vec::new();
        for (id, text) in tokens.iter().enumerate() {
            if types[id] != 1 {
                continue;
            }
            for (at, _) in text.char_indices().skip(1) {
                let (l, r) = text.split_at(at);
                if vocab.contains_key(l) && vocab.contains_key(r) {
                    merges.push((scores[id], id, l.to_string(), r.to_string()));
                }
            }
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let merges = merges.into_iter().map(|(_, _, l, r)| (l, r)).collect();
        let unk = tokens.iter().zip(&types).find(|(_, &t)| t == TOKEN_TYPE_UNKNOWN).map(|(t, _)| t.clone());
        let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
        if let Some(unk) = unk {
            builder = builder.unk_token(unk);
        }
        let bpe = builder.build().map_err(|e| TokenizerError::Invalid(format!("SentencePiece vocabulary: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let space_prefix = g.get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool).unwrap_or(true);
        let mut steps: Vec<NormalizerWrapper> = Vec::new();
        if space_prefix {
            steps.push(Prepend::new("\u{2581}".into()).into());
        }
        let replace = Replace::new(" ", "\u{2581}").map_err(|e| TokenizerError::Invalid(e.to_string()))?;
        steps.push(replace.into());
        inner.with_normalizer(Some(NormalizerSequence::new(steps)));
        Self::finish_gguf(g, inner, tokens, &types, PieceEncoding::Metaspace)
    }

    /// What both GGUF tokenizers share: special tokens, ids, the chat template.
    fn finish_gguf(
        g: &GgufFile,
        mut inner: tokenizers::Tokenizer,
        tokens: Vec<String>,
        types: &[i64],
        encoding: PieceEncoding,
    ) -> Result<Self, TokenizerError> {
        let n = tokens.len();
        let control: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        let literal: Vec<bool> =
            types.iter().map(|&t| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED).collect();
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&literal)
            .filter(|(text, &lit)| lit && !text.is_empty())
            .map(|(text, _)| AddedToken::from(text.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);
        inner.set_encode_special_tokens(true);

        let id_key = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match g.get(key) {
                None => Ok(None),
                Some(_) => {
                    let id = g.u32(key)?;
                    if (id as usize) < n {
                        Ok(Some(id))
                    } else {
                        // Some converters write an out-of-range id for "none".
                        tracing::warn!(key, id, vocab = n, "special token id outside the vocabulary, ignored");
                        Ok(None)
                    }
                }
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let eot = match id_key("tokenizer.ggml.eot_token_id")? {
            Some(id) => Some(id),
            None => tokens.iter().position(|t| t == "<|eot_id|>").map(|i| i as u32),
        };
        let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
            None => None,
            Some(_) => Some(g.bool("tokenizer.ggml.add_bos_token")?),
        };
        let chat_template = match g.get("tokenizer.chat_template") {
            None => None,
            Some(_) => Some(g.str("tokenizer.chat_template")?.to_string()),
        };
        let byte_token = tokens
            .iter()
            .zip(types)
            .map(|(text, &t)| t == TOKEN_TYPE_BYTE && parse_byte_token(text).is_some())
            .collect();

        Ok(Self::assemble(Parts {
            inner,
            vocab_size: n,
            texts: tokens,
            literal,
            control,
            byte_token,
            encoding,
            bos,
            eos,
            eot,
            add_bos,
            chat_template,
        }))
    }

    /// Load a Hugging Face `tokenizer.json`. When a `tokenizer_config.json`
    /// sits next to it, its `chat_template`, `bos_token`, `eos_token` and
    /// `add_bos_token` are used; otherwise the usual names are looked for.
    pub fn from_json_file(path: &Path) -> Result<Self, TokenizerError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| TokenizerError::Io { path: p.display().to_string(), message: e.to_string() })
        };
        let json = read(path)?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let options = if config_path.is_file() {
            let config: serde_json::Value = serde_json::from_slice(&read(&config_path)?)
                .map_err(|e| TokenizerError::Invalid(format!("{}: {e}", config_path.display())))?;
            options_from_config(&config)
        } else {
            JsonOptions::default()
        };
        Self::from_json_bytes(&json, options)
    }

    /// Build from the bytes of a `tokenizer.json` and the settings it lacks.
    pub fn from_json_bytes(json: &[u8], options: JsonOptions) -> Result<Self, TokenizerError> {
        let mut inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| TokenizerError::Invalid(format!("tokenizer.json: {e}")))?;
        let doc: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| TokenizerError::Invalid(format!("tokenizer.json: {e}")))?;
        let section = |name: &str| doc.get(name).map(|v| v.to_string()).unwrap_or_default();
        let shape = section("decoder") + &section("pre_tokenizer");
        let encoding = if shape.contains("ByteLevel") {
            PieceEncoding::ByteLevel
        } else if shape.contains("Metaspace") || shape.contains('\u{2581}') {
            PieceEncoding::Metaspace
        } else {
            PieceEncoding::Raw
        };
        let byte_fallback = doc.pointer("/model/byte_fallback").and_then(serde_json::Value::as_bool).unwrap_or(false);

        let n = inner.get_vocab_size(true);
        let mut texts = vec![String::new(); n];
        for (text, id) in inner.get_vocab(true) {
            if let Some(slot) = texts.get_mut(id as usize) {
                *slot = text;
            }
        }
        let mut control = vec![false; n];
        let mut literal = vec![false; n];
        for (id, token) in inner.get_added_tokens_decoder() {
            if let Some(i) = usize::try_from(id).ok().filter(|&i| i < n) {
                literal[i] = true;
                control[i] = token.special;
            }
        }
        let byte_token = texts.iter().map(|t| byte_fallback && parse_byte_token(t).is_some()).collect();
        inner.set_encode_special_tokens(true);

        let find = |name: &Option<String>, guesses: &[&str]| -> Option<u32> {
            match name {
                Some(name) => inner.token_to_id(name),
                None => guesses.iter().find_map(|g| inner.token_to_id(g)),
            }
        };
        let bos = find(&options.bos_token, &["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"]);
        let eos = find(&options.eos_token, &["<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"]);
        let eot = find(&options.eot_token, &["<|eot_id|>", "<|im_end|>", "<end_of_turn>"]);

        Ok(Self::assemble(Parts {
            inner,
            vocab_size: n,
            texts,
            literal,
            control,
            byte_token,
            encoding,
            bos,
            eos,
            eot,
            add_bos: options.add_bos,
            chat_template: options.chat_template,
        }))
    }

    fn assemble(p: Parts) -> Self {
        let n = p.vocab_size;
        let token_bytes: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let text = &p.texts[i];
                if p.literal[i] {
                    text.as_bytes().to_vec()
                } else if let Some(b) = parse_byte_token(text).filter(|_| p.byte_token[i]) {
                    vec![b]
                } else {
                    piece_to_bytes(text, p.encoding)
                }
            })
            .collect();

        let mut byte_tokens = [None; 256];
        for (id, bytes) in token_bytes.iter().enumerate() {
            if let [b] = bytes[..] {
                if !p.literal[id] && byte_tokens[b as usize].is_none() {
                    byte_tokens[b as usize] = Some(id as u32);
                }
            }
        }

        let mut specials: Vec<(String, u32)> = (0..n)
            .filter(|&i| p.literal[i] && !p.texts[i].is_empty())
            .map(|i| (p.texts[i].clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut special_first_bytes = [false; 256];
        for (text, _) in &specials {
            special_first_bytes[text.as_bytes()[0] as usize] = true;
        }

        let end = (0..n)
            .map(|i| {
                let id = Some(i as u32);
                id == p.eos || id == p.eot || (p.control[i] && END_TOKEN_NAMES.contains(&p.texts[i].as_str()))
            })
            .collect();

        let text_of = |id: Option<u32>| id.map(|i| p.texts[i as usize].clone()).unwrap_or_default();
        let template = match &p.chat_template {
            Some(source) => ChatTemplate::new(source).map_err(|e| {
                tracing::warn!(error = %e, "the model's chat template does not compile; chat requests will fail");
                e.to_string()
            }),
            None => ChatTemplate::new(DEFAULT_CHAT_TEMPLATE).map_err(|e| e.to_string()),
        };

        Self {
            vocab_size: n,
            token_bytes,
            control: p.control,
            end,
            specials,
            special_first_bytes,
            byte_tokens,
            bos: p.bos,
            eos: p.eos,
            eot: p.eot,
            add_bos: p.add_bos.unwrap_or(true) && p.bos.is_some(),
            bos_text: text_of(p.bos),
            eos_text: text_of(p.eos),
            template,
            inner: p.inner,
        }
    }

    /// Replace the chat template (for example from a command-line flag).
    pub fn set_chat_template(&mut self, source: &str) -> Result<(), TokenizerError> {
        self.template = Ok(ChatTemplate::new(source)?);
        Ok(())
    }

    /// The chat template's source, if it compiled.
    pub fn chat_template(&self) -> Option<&str> {
        self.template.as_ref().ok().map(ChatTemplate::source)
    }

    /// Number of ids, control tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Whether a raw prompt should start with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Plain text to ids. Text spelling a control token stays text. No BOS.
    pub fn encode_text(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        let ids = match self.inner.encode_fast(text, false) {
            Ok(enc) => enc.get_ids().to_vec(),
            Err(e) => {
                tracing::warn!(error = %e, "tokenizer failed, falling back to byte tokens");
                return self.bytes_as_tokens(text.as_bytes());
            }
        };
        if !ids.iter().any(|&id| self.is_control(id)) {
            return ids;
        }
        // Only a vocabulary whose merges rebuild a control token's text gets
        // here; spell such a token out byte by byte instead.
        let mut safe = Vec::with_capacity(ids.len());
        for id in ids {
            if self.is_control(id) {
                safe.extend(self.bytes_as_tokens(&self.token_bytes[id as usize]));
            } else {
                safe.push(id);
            }
        }
        safe
    }

    fn bytes_as_tokens(&self, bytes: &[u8]) -> Vec<u32> {
        bytes.iter().filter_map(|&b| self.byte_tokens[b as usize]).collect()
    }

    /// The chat template's output as text.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        Ok(self.template()?.render(messages, add_generation_prompt, &self.bos_text, &self.eos_text)?)
    }

    fn template(&self) -> Result<&ChatTemplate, TokenizerError> {
        self.template.as_ref().map_err(|e| TokenizerError::Template(ChatTemplateError::Syntax(e.clone())))
    }

    /// A rendered conversation as ids. Control tokens are recognised only in
    /// text the template wrote; message contents are encoded as plain text.
    /// BOS appears only if the template writes it.
    ///
    /// The template is rendered with each content replaced by a sentinel; the
    /// output is cut at the sentinels and at the control tokens the template
    /// wrote, and the text between control tokens (template text and contents
    /// together) is encoded in one piece, exactly as if the whole prompt had
    /// been tokenized. Contents are inserted as given, so a template that
    /// edits contents (`| trim`) has no effect on them.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let template = self.template()?;
        let prefix = sentinel_prefix(messages);
        let sentinels: Vec<String> = (0..messages.len()).map(|i| format!("{prefix}{i}\u{E001}")).collect();
        let masked: Vec<ChatMessage<'_>> =
            messages.iter().zip(&sentinels).map(|(m, s)| ChatMessage { role: m.role, content: s }).collect();
        let rendered = template.render(&masked, add_generation_prompt, &self.bos_text, &self.eos_text)?;

        let cut = || TokenizerError::Invalid("the chat template cut a message content apart".into());
        let mut ids = Vec::new();
        let mut text = String::new();
        let mut rest = rendered.as_str();
        while let Some(at) = rest.find(&prefix) {
            self.push_template_text(&rest[..at], &mut text, &mut ids);
            let after = &rest[at + prefix.len()..];
            let close = after.find('\u{E001}').ok_or_else(cut)?;
            let index: usize = after[..close].parse().map_err(|_| cut())?;
            text.push_str(messages.get(index).ok_or_else(cut)?.content);
            rest = &after[close + '\u{E001}'.len_utf8()..];
        }
        self.push_template_text(rest, &mut text, &mut ids);
        ids.extend(self.encode_text(&text));
        Ok(ids)
    }

    /// Append template output: plain runs go to `text`, control tokens flush
    /// `text` and go to `ids`.
    fn push_template_text(&self, piece: &str, text: &mut String, ids: &mut Vec<u32>) {
        let bytes = piece.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            if self.special_first_bytes[bytes[i] as usize] {
                if let Some((s, id)) = self.specials.iter().find(|(s, _)| bytes[i..].starts_with(s.as_bytes())) {
                    text.push_str(&piece[start..i]);
                    ids.extend(self.encode_text(text));
                    text.clear();
                    ids.push(*id);
                    i += s.len();
                    start = i;
                    continue;
                }
            }
            i += 1;
        }
        text.push_str(&piece[start..]);
    }

    /// Text of `ids`, control tokens written out as their names.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The raw bytes a token stands for (a control token: its name). Empty
    /// for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.token_bytes_ref(id).to_vec()
    }

    /// [`Tokenizer::token_bytes`] without the copy.
    pub fn token_bytes_ref(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The vocabulary entry of `id`, as the tokenizer spells it.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// End of generation: EOS, EOT, or a control token named like one.
    pub fn is_end(&self, id: u32) -> bool {
        self.end.get(id as usize).copied().unwrap_or(false)
    }

    /// Every id [`Tokenizer::is_end`] holds true for.
    pub fn end_ids(&self) -> Vec<u32> {
        (0..self.end.len() as u32).filter(|&id| self.is_end(id)).collect()
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }
}

/// A sentinel prefix that no message content contains, so that splitting the
/// rendered template on it finds only the places contents were inserted.
fn sentinel_prefix(messages: &[ChatMessage<'_>]) -> String {
    (0u64..)
        .map(|n| format!("\u{E000}tern-content-{n}:"))
        .find(|p| !messages.iter().any(|m| m.content.contains(p.as_str()) || m.role.contains(p.as_str())))
        .expect("some prefix is unused")
}

fn byte_level_pre_tokenizer(pattern: Option<&str>) -> Result<PreTokenizerWrapper, TokenizerError> {
    let invalid = |e| TokenizerError::Invalid(format!("pre-tokenizer pattern: {e}"));
    Ok(match pattern {
        // ByteLevel's own regex is GPT-2's.
        None => ByteLevel::new(false, true, true).into(),
        Some(p) => {
            let split = Split::new(SplitPattern::Regex(p.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(invalid)?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
    })
}

/// `<0xAB>` → 0xAB.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn piece_to_bytes(text: &str, encoding: PieceEncoding) -> Vec<u8> {
    match encoding {
        PieceEncoding::Raw => text.as_bytes().to_vec(),
        PieceEncoding::Metaspace => text.replace('\u{2581}', " ").into_bytes(),
        PieceEncoding::ByteLevel => {
            let mut out = Vec::with_capacity(text.len());
            for c in text.chars() {
                match gpt2_char_to_byte(c) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            out
        }
    }
}

/// GPT-2 draws bytes that are printable Latin-1 as themselves and the other
/// 68 as U+0100 onwards, in byte order.
fn gpt2_byte_is_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

pub fn gpt2_byte_to_char(b: u8) -> char {
    if gpt2_byte_is_printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !gpt2_byte_is_printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("U+0100..U+0143")
}

/// Inverse of [`gpt2_byte_to_char`]; the drawn characters all lie below U+0144.
fn gpt2_char_to_byte(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<[Option<u8>; 0x144]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [None; 0x144];
        for b in 0..=255u8 {
            t[gpt2_byte_to_char(b) as usize] = Some(b);
        }
        t
    });
    table.get(c as usize).copied().flatten()
}

/// Reads `tokenizer_config.json` fields: a string or `{"content": ...}` for
/// token names, a string or a list of named templates for `chat_template`.
fn options_from_config(config: &serde_json::Value) -> JsonOptions {
    let token_name = |key: &str| -> Option<String> {
        let v = config.get(key)?;
        v.as_str().or_else(|| v.get("content").and_then(serde_json::Value::as_str)).map(str::to_string)
    };
    let chat_template = config.get("chat_template").and_then(|t| match t {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|e| e.get("name").and_then(serde_json::Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|e| e.get("template"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string),
        _ => None,
    });
    JsonOptions {
        chat_template,
        bos_token: token_name("bos_token"),
        eos_token: token_name("eos_token"),
        eot_token: None,
        add_bos: config.get("add_bos_token").and_then(serde_json::Value::as_bool),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::Utf8Stream;
    use std::collections::BTreeMap;

    const BOT: &str = "<|begin_of_text|>";
    const EOT: &str = "<|eot_id|>";
    const END: &str = "<|end_of_text|>";

    /// Byte-level text of a string, as a GPT-2 vocabulary spells it.
    fn bl(s: &str) -> String {
        s.bytes().map(gpt2_byte_to_char).collect()
    }

    /// 256 byte tokens, a few merges, then the control tokens.
    fn test_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_byte_to_char(b).to_string()).collect();
        let mut merges = Vec::new();
        let mut merge = |tokens: &mut Vec<String>, a: &str, b: &str| {
            let (a, b) = (bl(a), bl(b));
            merges.push(format!("{a} {b}"));
            tokens.push(format!("{a}{b}"));
        };
        merge(&mut tokens, "h", "e");
        merge(&mut tokens, "l", "l");
        merge(&mut tokens, "he", "ll");
        merge(&mut tokens, "hell", "o");
        merge(&mut tokens, " ", "w");
        merge(&mut tokens, "e", "o");
        let mut types = vec![1; tokens.len()];
        for c in [BOT, END, EOT] {
            tokens.push(c.to_string());
            types.push(3);
        }
        tokens.push("<tool>".to_string());
        types.push(4);
        // A merge across digits, after the control tokens so their ids stay put.
        merges.push("3 4".to_string());
        tokens.push("34".to_string());
        types.push(1);
        (tokens, types, merges)
    }

    fn strings(v: &[String]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.clone())).collect())
    }

    fn test_metadata(pre: &str) -> BTreeMap<String, Value> {
        let (tokens, types, merges) = test_vocab();
        let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
        let mut m = BTreeMap::new();
        m.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
        m.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
        m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(id(BOT)));
        m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(id(END)));
        m.insert("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect()));
        m.insert("tokenizer.ggml.merges".into(), strings(&merges));
        m.insert("tokenizer.ggml.tokens".into(), strings(&tokens));
        m
    }

    fn test_tokenizer() -> Tokenizer {
        Tokenizer::from_gguf(&GgufFile::from_metadata(test_metadata("llama-bpe"))).unwrap()
    }

    #[test]
    fn tokenizer_loads_from_gguf_metadata() {
        let tok = test_tokenizer();
        assert_eq!(tok.vocab_size(), 256 + 6 + 4 + 1);
        assert_eq!(tok.bos(), Some(262));
        assert_eq!(tok.eos(), Some(263));
        assert_eq!(tok.eot(), Some(264), "<|eot_id|> is found by name");
        assert!(tok.add_bos());
        assert!(tok.is_control(262) && !tok.is_control(265) && !tok.is_control(10));
        assert!(tok.is_end(263) && tok.is_end(264) && !tok.is_end(262));
    }

    #[test]
    fn tokenizer_round_trips_ascii_and_multibyte_text() {
        for pre in ["llama-bpe", "gpt2", "something-new"] {
            let tok = Tokenizer::from_gguf(&GgufFile::from_metadata(test_metadata(pre))).unwrap();
            for text in ["hello world", "héllo wörld 日本 🦀", "  spaces\n\nand\ttabs 123456 ", ""] {
                let ids = tok.encode_text(text);
                assert_eq!(tok.decode(&ids), text, "pre {pre}");
                let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
                assert_eq!(bytes, text.as_bytes());
            }
        }
    }

    #[test]
    fn tokenizer_applies_merges() {
        let tok = test_tokenizer();
        let hello = tok.token_id(&bl("hello")).unwrap();
        let space_w = tok.token_id(&bl(" w")).unwrap();
        assert_eq!(tok.encode_text("hello"), vec![hello]);
        let ids = tok.encode_text("hello world");
        assert_eq!(&ids[..2], &[hello, space_w]);
        assert_eq!(ids.len(), 2 + 4, "` w` merged, `orld` left as bytes");
        // Pre-tokenization keeps merges inside words: "eo" never spans "he" + "o".
        assert_eq!(tok.encode_text("heo"), vec![tok.token_id(&bl("he")).unwrap(), tok.token_id("o").unwrap()]);
    }

    #[test]
    fn tokenizer_llama3_pattern_groups_digits_in_threes() {
        // Llama 3 splits "1234" into "123" + "4", so the "34" merge cannot
        // apply; GPT-2 keeps the digits together and merges them.
        let llama3 = test_tokenizer();
        let gpt2 = Tokenizer::from_gguf(&GgufFile::from_metadata(test_metadata("gpt2"))).unwrap();
        let merged = gpt2.token_id("34").unwrap();
        assert_eq!(llama3.encode_text("1234").len(), 4);
        assert!(!llama3.encode_text("1234").contains(&merged));
        assert_eq!(gpt2.encode_text("1234"), vec![gpt2.token_id("1").unwrap(), gpt2.token_id("2").unwrap(), merged]);
        assert_eq!(llama3.decode(&llama3.encode_text("a 1234567")), "a 1234567");
    }

    #[test]
    fn tokenizer_encode_text_never_yields_control_tokens() {
        let tok = test_tokenizer();
        for text in [EOT, "hi<|eot_id|>there", "<|begin_of_text|><|end_of_text|>", "<tool>"] {
            let ids = tok.encode_text(text);
            assert!(ids.iter().all(|&id| !tok.is_control(id) && id < 262), "{text}: {ids:?}");
            assert_eq!(tok.decode(&ids), text);
        }
    }

    #[test]
    fn tokenizer_encode_text_spells_out_control_tokens_rebuilt_by_merges() {
        // A vocabulary whose merges can rebuild `<|x|>` from its bytes.
        let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_byte_to_char(b).to_string()).collect();
        let mut types = vec![1; 256];
        let merges = vec!["< |".to_string(), "<| x".to_string(), "<|x |".to_string(), "<|x| >".to_string()];
        for t in ["<|", "<|x", "<|x|"] {
            tokens.push(t.into());
            types.push(1);
        }
        tokens.push("<|x|>".into());
        types.push(3);
        let mut m = BTreeMap::new();
        m.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
        m.insert("tokenizer.ggml.tokens".into(), strings(&tokens));
        m.insert("tokenizer.ggml.merges".into(), strings(&merges));
        m.insert("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect()));
        let tok = Tokenizer::from_gguf(&GgufFile::from_metadata(m)).unwrap();
        let ids = tok.encode_text("<|x|>");
        assert!(!ids.contains(&259), "{ids:?}");
        assert_eq!(tok.decode(&ids), "<|x|>");
        assert!(!tok.add_bos(), "no BOS token, nothing to add");
    }

    #[test]
    fn tokenizer_renders_default_template() {
        let tok = test_tokenizer();
        let msgs = [ChatMessage { role: "user", content: "hello" }];
        assert_eq!(tok.render_chat(&msgs, true).unwrap(), "<|begin_of_text|>User: hello<|eot_id|>Assistant: ");
    }

    #[test]
    fn tokenizer_encode_chat_parses_only_template_control_tokens() {
        let tok = test_tokenizer();
        let (bos, eot) = (tok.bos().unwrap(), tok.eot().unwrap());
        let msgs = [ChatMessage { role: "user", content: "hello<|eot_id|>Assistant: sure" }];
        let ids = tok.encode_chat(&msgs, true).unwrap();
        assert_eq!(ids[0], bos, "the template writes BOS");
        assert_eq!(ids.iter().filter(|&&id| id == bos).count(), 1);
        assert_eq!(ids.iter().filter(|&&id| id == eot).count(), 1, "only the template's <|eot_id|>: {ids:?}");
        assert_eq!(tok.decode(&ids), tok.render_chat(&msgs, true).unwrap());

        // Template text and contents between control tokens are encoded as one
        // piece, as a tokenizer run over the whole prompt would.
        let msgs = [ChatMessage { role: "user", content: "hello" }];
        let ids = tok.encode_chat(&msgs, false).unwrap();
        let mut expected = vec![bos];
        expected.extend(tok.encode_text("User: hello"));
        expected.push(eot);
        assert_eq!(ids, expected);
    }

    #[test]
    fn tokenizer_encode_chat_handles_contents_written_twice_or_not_at_all() {
        let mut tok = test_tokenizer();
        tok.set_chat_template(
            "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}|{{ m.content }}{% endif %}<|eot_id|>{% endfor %}",
        )
        .unwrap();
        let msgs = [ChatMessage { role: "system", content: "zzz" }, ChatMessage { role: "user", content: "ab" }];
        let ids = tok.encode_chat(&msgs, false).unwrap();
        assert_eq!(tok.decode(&ids), "<|eot_id|>ab|ab<|eot_id|>");
        assert_eq!(ids[0], tok.eot().unwrap());
        assert_eq!(*ids.last().unwrap(), tok.eot().unwrap());
        assert_eq!(ids.iter().filter(|&&id| tok.is_control(id)).count(), 2);
    }

    #[test]
    fn tokenizer_broken_template_fails_only_chat() {
        let mut m = test_metadata("llama-bpe");
        m.insert("tokenizer.chat_template".into(), Value::String("{% if %}".into()));
        let tok = Tokenizer::from_gguf(&GgufFile::from_metadata(m)).unwrap();
        assert!(!tok.encode_text("hello").is_empty());
        let msgs = [ChatMessage { role: "user", content: "x" }];
        assert!(matches!(tok.encode_chat(&msgs, true), Err(TokenizerError::Template(_))));
        assert!(tok.chat_template().is_none());
    }

    #[test]
    fn tokenizer_uses_the_gguf_chat_template_and_add_bos() {
        let mut m = test_metadata("llama-bpe");
        m.insert(
            "tokenizer.chat_template".into(),
            Value::String("{% for m in messages %}{{ m.content.strip() }}{{ eos_token }}{% endfor %}".into()),
        );
        m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
        let tok = Tokenizer::from_gguf(&GgufFile::from_metadata(m)).unwrap();
        assert!(!tok.add_bos());
        let msgs = [ChatMessage { role: "user", content: " hello " }];
        assert_eq!(tok.render_chat(&msgs, true).unwrap(), "hello<|end_of_text|>");
        let ids = tok.encode_chat(&msgs, true).unwrap();
        assert_eq!(ids.last(), tok.eos().as_ref());
        assert!(!ids.contains(&tok.bos().unwrap()));
    }

    #[test]
    fn tokenizer_rejects_unsupported_or_malformed_vocabularies() {
        let mut m = test_metadata("gpt2");
        m.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
        assert!(matches!(Tokenizer::from_gguf(&GgufFile::from_metadata(m)), Err(TokenizerError::Unsupported(_))));
        let mut m = test_metadata("gpt2");
        m.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        m.insert("tokenizer.ggml.scores".into(), Value::Array(vec![Value::F32(0.0)]));
        assert!(matches!(Tokenizer::from_gguf(&GgufFile::from_metadata(m)), Err(TokenizerError::Invalid(_))));

        let mut m = test_metadata("gpt2");
        m.insert("tokenizer.ggml.token_type".into(), Value::Array(vec![Value::I32(1)]));
        assert!(matches!(Tokenizer::from_gguf(&GgufFile::from_metadata(m)), Err(TokenizerError::Invalid(_))));

        let mut m = test_metadata("gpt2");
        m.insert("tokenizer.ggml.merges".into(), strings(&["nospace".to_string()]));
        assert!(matches!(Tokenizer::from_gguf(&GgufFile::from_metadata(m)), Err(TokenizerError::Invalid(_))));

        let mut m = test_metadata("gpt2");
        m.remove("tokenizer.ggml.tokens");
        let err = Tokenizer::from_gguf(&GgufFile::from_metadata(m)).unwrap_err();
        assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
    }

    #[test]
    fn tokenizer_token_bytes_cover_byte_level_and_fallback_forms() {
        let tok = test_tokenizer();
        assert_eq!(tok.token_bytes(tok.token_id(&bl(" w")).unwrap()), b" w");
        assert_eq!(tok.token_bytes(tok.token_id(&gpt2_byte_to_char(0xF0).to_string()).unwrap()), [0xF0]);
        assert_eq!(tok.token_bytes(tok.eot().unwrap()), EOT.as_bytes());
        assert!(tok.token_bytes(100_000).is_empty());
        assert_eq!(parse_byte_token("<0xAB>"), Some(0xAB));
        assert_eq!(parse_byte_token("<0xABC>"), None);
        assert_eq!(piece_to_bytes("\u{2581}hi", PieceEncoding::Metaspace), b" hi");
        for b in 0..=255u8 {
            assert_eq!(gpt2_char_to_byte(gpt2_byte_to_char(b)), Some(b));
        }
        assert_eq!(gpt2_byte_to_char(b' '), '\u{120}');
        assert_eq!(gpt2_byte_to_char(b'\n'), '\u{10A}');
    }

    /// A small HF tokenizer.json: byte-level BPE with the test vocabulary.
    fn test_json() -> String {
        let (tokens, types, merges) = test_vocab();
        let vocab: serde_json::Map<String, serde_json::Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
        let added: Vec<serde_json::Value> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, &t))| t == 3)
            .map(|(i, (t, _))| {
                serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges}
        })
        .to_string()
    }

    #[test]
    fn tokenizer_loads_hf_tokenizer_json() {
        let tok = Tokenizer::from_json_bytes(test_json().as_bytes(), JsonOptions::default()).unwrap();
        assert_eq!(tok.bos(), Some(262));
        assert_eq!(tok.eos(), Some(263));
        assert_eq!(tok.eot(), Some(264));
        assert!(tok.is_end(264) && tok.is_control(262));
        let text = "héllo wörld 日本 🦀<|eot_id|>";
        let ids = tok.encode_text(text);
        assert!(!ids.contains(&264));
        assert_eq!(tok.decode(&ids), text);
        assert_eq!(tok.encode_text("hello"), vec![tok.token_id(&bl("hello")).unwrap()]);
        let msgs = [ChatMessage { role: "user", content: "hi" }];
        let ids = tok.encode_chat(&msgs, true).unwrap();
        assert_eq!((ids[0], ids.iter().filter(|&&i| i == 264).count()), (262, 1));
    }

    #[test]
    fn tokenizer_reads_tokenizer_config_next_to_the_json() {
        let dir = std::env::temp_dir().join(format!("tern-tok-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), test_json()).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            serde_json::json!({
                "bos_token": {"content": "<|begin_of_text|>"}, "eos_token": "<|eot_id|>", "add_bos_token": false,
                "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}"
            })
            .to_string(),
        )
        .unwrap();
        let tok = Tokenizer::from_json_file(&dir.join("tokenizer.json")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(tok.eos(), Some(264));
        assert!(!tok.add_bos());
        let msgs = [ChatMessage { role: "user", content: "hi" }];
        assert_eq!(tok.render_chat(&msgs, false).unwrap(), "<|begin_of_text|>[user]hi<|eot_id|>");
    }

    #[test]
    fn tokenizer_streams_emoji_split_across_byte_tokens() {
        let tok = test_tokenizer();
        let ids = tok.encode_text("🦀");
        assert_eq!(ids.len(), 4, "no merges: one token per byte");
        let mut stream = Utf8Stream::new();
        let pieces: Vec<String> = ids.iter().map(|&id| stream.push(&tok.token_bytes(id))).collect();
        assert_eq!(pieces, ["", "", "", "🦀"]);
    }
}

//! A served model: its weights on a backend, its tokenizer, and what
//! clients see of it.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::gguf::GgufFile;
use crate::grammar::{Automaton, Constraint, GrammarError, TokenTrie};
use crate::hf;
use crate::model::{LoadOptions, Model};
use crate::tokenizer::Tokenizer;

/// What clients see of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    pub architecture: String,
    pub parameter_count: u64,
    pub context_length: u32,
    pub quantization: String,
    pub size_bytes: u64,
    pub modified_at: u64,
    /// What runs it ([`crate::model::ComputeBackend::device`]).
    pub device: String,
    /// Bytes it holds in a GPU's memory (0 on the CPU).
    pub device_memory_bytes: u64,
}

/// A model with its tokenizer, ready to run.
pub struct LoadedModel {
    pub info: ModelInfo,
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// The vocabulary as a trie, built for the first constrained generation.
    token_trie: OnceLock<Arc<TokenTrie>>,
    /// Automata of the constraints used lately, most recent last: the
    /// states and token sets they built serve the next request that
    /// brings the same constraint.
    automata: Mutex<Vec<(Constraint, Arc<Automaton>)>>,
}

/// Constraints whose automata are kept per model.
const KEPT_AUTOMATA: usize = 32;

impl LoadedModel {
    /// Loads a GGUF file or a Hugging Face checkpoint folder ([`hf`]), and
    /// optionally a separate tokenizer.json. Its id is `general.name` (a
    /// folder's name), else the file stem.
    pub fn load(path: &Path, tokenizer: Option<&Path>, options: &LoadOptions) -> Result<Self, String> {
        let in_file = |e: String| format!("{}: {e}", path.display());
        let (file, own_tokenizer) = if hf::is_checkpoint(path) {
            let (file, t) = hf::load(path).map_err(|e| in_file(e.to_string()))?;
            (file, Some(t))
        } else {
            (GgufFile::open(path).map_err(|e| in_file(e.to_string()))?, None)
        };
        let tokenizer = match (tokenizer, own_tokenizer) {
            (Some(t), _) => Some(Tokenizer::from_json_file(t).map_err(|e| in_file(format!("tokenizer: {e}")))?),
            (None, own) => own,
        };
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        let modified_at = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Self::from_gguf(&file, tokenizer, &stem, modified_at, options).map_err(in_file)
    }

    /// A model from a parsed GGUF (a file, or an image in memory), with the
    /// GGUF's own tokenizer unless one is given. Its id is `general.name`,
    /// else `name`.
    pub fn from_gguf(
        file: &GgufFile,
        tokenizer: Option<Tokenizer>,
        name: &str,
        modified_at: u64,
        options: &LoadOptions,
    ) -> Result<Self, String> {
        let model = Model::load(file, options).map_err(|e| e.to_string())?;
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => Tokenizer::from_gguf(file).map_err(|e| format!("tokenizer: {e}"))?,
        };
        let id =
            file.get("general.name").and_then(|v| v.as_str()).filter(|s| !s.is_empty()).unwrap_or(name).to_string();
        let c = model.config();
        let info = ModelInfo {
            id,
            architecture: c.architecture.clone(),
            parameter_count: model.summary().parameter_count,
            context_length: c.n_ctx as u32,
            quantization: model.summary().ternary_type.name(),
            size_bytes: file.file_size(),
            modified_at,
            device: model.backend().device(),
            device_memory_bytes: model.backend().device_memory_bytes(),
        };
        Ok(Self::new(info, model, tokenizer))
    }

    pub fn new(info: ModelInfo, model: Model, tokenizer: Tokenizer) -> Self {
        Self { info, model, tokenizer, token_trie: OnceLock::new(), automata: Mutex::new(Vec::new()) }
    }

    /// The automaton that runs `constraint` over this model's vocabulary.
    pub fn automaton(&self, constraint: &Constraint) -> Result<Arc<Automaton>, GrammarError> {
        let mut kept = self.automata.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = kept.iter().position(|(c, _)| c == constraint) {
            let entry = kept.remove(i);
            let automaton = entry.1.clone();
            kept.push(entry);
            return Ok(automaton);
        }
        let grammar = constraint.grammar()?;
        let trie = self.token_trie.get_or_init(|| Arc::new(TokenTrie::new(&self.tokenizer))).clone();
        let automaton = Arc::new(Automaton::new(grammar, trie)?);
        if kept.len() >= KEPT_AUTOMATA {
            kept.remove(0);
        }
        kept.push((constraint.clone(), automaton.clone()));
        Ok(automaton)
    }
}

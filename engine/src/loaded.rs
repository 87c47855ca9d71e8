//! A served model: its weights on a backend, its tokenizer, and what
//! clients see of it.

use std::path::Path;
use std::time::SystemTime;

use crate::gguf::GgufFile;
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
}

/// A model with its tokenizer, ready to run.
pub struct LoadedModel {
    pub info: ModelInfo,
    pub model: Model,
    pub tokenizer: Tokenizer,
}

impl LoadedModel {
    /// Loads a GGUF file (and optionally a separate tokenizer.json). Its id
    /// is `general.name`, else the file stem.
    pub fn load(path: &Path, tokenizer: Option<&Path>, options: &LoadOptions) -> Result<Self, String> {
        let file = GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let model = Model::load(&file, options).map_err(|e| format!("{}: {e}", path.display()))?;
        let tokenizer = match tokenizer {
            Some(t) => Tokenizer::from_json_file(t),
            None => Tokenizer::from_gguf(&file),
        }
        .map_err(|e| format!("{}: tokenizer: {e}", path.display()))?;
        let id = file
            .get("general.name")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        let modified_at = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let c = model.config();
        let info = ModelInfo {
            id,
            architecture: c.architecture.clone(),
            parameter_count: model.summary().parameter_count,
            context_length: c.n_ctx as u32,
            quantization: model.summary().ternary_type.name(),
            size_bytes: file.file_size(),
            modified_at,
        };
        Ok(Self { info, model, tokenizer })
    }
}

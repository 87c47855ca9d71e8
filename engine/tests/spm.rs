//! GGUF files whose tokenizer is SentencePiece (`tokenizer.ggml.model =
//! "llama"`): the engine encodes text as SentencePiece itself does
//! (tests/fixtures/spm.json, made by tests/fixtures/make_spm_fixture.py).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value as Json;
use tern_engine::gguf::{GgufFile, Value};
use tern_engine::tokenizer::Tokenizer;

fn fixture() -> Json {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/spm.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn tokenizer(f: &Json) -> Tokenizer {
    let list =
        |key: &str, map: &dyn Fn(&Json) -> Value| Value::Array(f[key].as_array().unwrap().iter().map(map).collect());
    let mut m = BTreeMap::new();
    m.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    m.insert("tokenizer.ggml.tokens".into(), list("pieces", &|v| Value::String(v.as_str().unwrap().into())));
    m.insert("tokenizer.ggml.scores".into(), list("scores", &|v| Value::F32(v.as_f64().unwrap() as f32)));
    m.insert("tokenizer.ggml.token_type".into(), list("types", &|v| Value::I32(v.as_i64().unwrap() as i32)));
    m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(f["bos"].as_u64().unwrap() as u32));
    m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(f["eos"].as_u64().unwrap() as u32));
    Tokenizer::from_gguf(&GgufFile::from_metadata(m)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn sentencepiece_vocabularies_encode_as_sentencepiece_does() {
    let f = fixture();
    let t = tokenizer(&f);
    for case in f["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(t.encode_text(text), want, "{text:?}");
        if !text.is_empty() {
            // `▁` reads back as a space, byte tokens as their bytes.
            assert_eq!(t.decode(&want).strip_prefix(' ').unwrap_or(""), text, "{text:?}");
        }
    }
    assert!(t.is_end(f["eos"].as_u64().unwrap() as u32));
    assert_eq!(t.bos(), Some(f["bos"].as_u64().unwrap() as u32));
}

//! Constrained generation with the bundled model: whatever the small model
//! would rather write, the text matches the grammar, and a generation that
//! runs short of tokens still finishes its JSON.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tern_engine::grammar::Constraint;
use tern_engine::{
    Engine, EngineConfig, EngineError, FinishReason, GenerateRequest, Message, Priority, Prompt, SamplingParams,
};

fn engine() -> Engine {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tern-tiny.gguf");
    Engine::load(EngineConfig { models: vec![path], ..Default::default() }).expect("the bundled model loads")
}

fn generate(
    e: &Engine,
    constraint: Constraint,
    temperature: f32,
    seed: u64,
    max_tokens: u32,
) -> Result<(String, FinishReason), EngineError> {
    let generation = e.generate(GenerateRequest {
        model: "tern-tiny".into(),
        prompt: Prompt::Chat(vec![Message { role: "user".into(), content: "Describe a person as JSON.".into() }]),
        max_tokens,
        sampling: SamplingParams { temperature, constraint: Some(constraint), ..Default::default() },
        seed: Some(seed),
        stop: vec![],
        timeout: Some(Duration::from_secs(60)),
        priority: Priority::Interactive,
    })?;
    let (text, finished) = generation.collect()?;
    Ok((text, finished.reason))
}

#[test]
fn every_output_parses_and_keeps_to_its_schema() {
    let e = engine();
    let person = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "kind": {"enum": ["cat", "dog", "human"]},
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "kind", "tags", "ok", "code"],
        "additionalProperties": false
    });
    for (temperature, seed) in [(0.0, 0), (0.8, 1), (1.5, 2), (1.5, 3)] {
        let (text, reason) = generate(&e, Constraint::JsonSchema(person.to_string()), temperature, seed, 200).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text:?}"));
        let o = v.as_object().unwrap();
        assert_eq!(o.keys().collect::<Vec<_>>(), ["name", "age", "kind", "code", "tags", "ok"], "{text}");
        let code: Vec<char> = o["code"].as_str().unwrap().chars().collect();
        assert!(code.len() == 6 && code[..2].iter().all(char::is_ascii_uppercase) && code[2] == '-', "{text}");
        assert!(o["name"].as_str().unwrap().chars().count() <= 12);
        assert!((0..=120).contains(&o["age"].as_i64().unwrap()));
        assert!(["cat", "dog", "human"].contains(&o["kind"].as_str().unwrap()));
        assert!(o["tags"].as_array().unwrap().len() <= 3);
        assert_eq!(reason, FinishReason::Stop, "the object closes and the generation stops there: {text}");
    }
}

#[test]
fn a_short_budget_still_ends_in_complete_json() {
    let e = engine();
    let schema = json!({"type": "object", "properties": {"story": {"type": "string"}, "n": {"type": "array", "items": {"type": "integer"}}}, "required": ["story", "n"]});
    // The shortest such object, {"story":"","n":[]}, is 19 bytes: a budget of
    // 19 tokens leaves no room for anything else.
    for max_tokens in [19, 24, 31] {
        let (text, _) =
            generate(&e, Constraint::JsonSchema(schema.to_string()), 1.0, u64::from(max_tokens), max_tokens).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text:?}"));
        assert!(v["story"].is_string() && v["n"].is_array(), "{text}");
    }
}

#[test]
fn json_object_and_gbnf_constraints() {
    let e = engine();
    let (text, _) = generate(&e, Constraint::JsonObject, 1.0, 5, 60).unwrap();
    assert!(serde_json::from_str::<Value>(&text).unwrap().is_object(), "{text}");
    let (text, reason) =
        generate(&e, Constraint::Gbnf("root ::= (\"yes\" | \"no\") \", \" [a-z]{1,8} \".\"".into()), 1.0, 6, 60)
            .unwrap();
    let (word, rest) = text.split_once(", ").unwrap_or_else(|| panic!("{text:?}"));
    assert!(["yes", "no"].contains(&word) && rest.ends_with('.') && rest.len() <= 9, "{text:?}");
    assert_eq!(reason, FinishReason::Stop);
}

#[test]
fn a_bad_grammar_or_schema_is_an_invalid_request() {
    let e = engine();
    for (c, words) in [
        (Constraint::Gbnf("root ::= missing".into()), "not defined"),
        (Constraint::JsonSchema("{\"type\": \"array\", \"uniqueItems\": true}".into()), "uniqueItems"),
        (Constraint::JsonSchema("[1".into()), "not JSON"),
    ] {
        match generate(&e, c, 0.0, 0, 10) {
            Err(EngineError::InvalidRequest(m)) => assert!(m.contains(words), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_complete_text_ends_rather_than_start_what_its_budget_cannot_finish() {
    let e = engine();
    let grammar = "root ::= \"a\" | \"a\" \"b\"{20}";
    for seed in 0..6 {
        let (text, reason) = generate(&e, Constraint::Gbnf(grammar.into()), 1.5, seed, 3).unwrap();
        assert_eq!((text.as_str(), reason), ("a", FinishReason::Stop), "seed {seed}");
    }
}

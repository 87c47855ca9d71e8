//! Tool calling, for the APIs that offer it (OpenAI's chat completions and
//! Ollama's chat): the tools described to the model, what its answer must
//! be, and the call read back out of the answer.
//!
//! The model is told the tools in a system message and asked to answer a
//! call as one JSON object, `{"name": …, "arguments": {…}}`. The engine
//! keeps it to that: a forced call (`required`, or a named function) must be
//! such an object for one of the tools, with arguments valid against that
//! tool's parameter schema; with `auto` the answer is either such an object
//! or prose that does not start with `{`. Earlier calls and their results
//! are written into the conversation the same way, so the model's chat
//! template needs no notion of tools.

use serde_json::{json, Map, Value};

use crate::engine_client::{Constraint, Message};
use crate::error::ApiError;
use crate::json::parse_objects;
use crate::json::Fields;
use crate::wire::unique_hex;

/// Longest tool name (OpenAI's limit).
const MAX_NAME: usize = 64;
/// Most tools one request may offer.
const MAX_TOOLS: usize = 128;

/// A function the model may call.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

/// Whether the model must call a tool.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// It answers in prose or calls one, as it chooses.
    Auto,
    /// It calls one of them.
    Required,
    /// It calls this one.
    Function(String),
}

/// The tools of a request and whether one must be called.
#[derive(Debug, Clone)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub choice: Choice,
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

/// `tools`: a list of `{"type": "function", "function": {name, description,
/// parameters, strict}}` (OpenAI's and Ollama's shape); empty or absent is
/// none.
pub fn parse_tools(f: &Fields<'_>) -> Result<Vec<Tool>, ApiError> {
    match f.get("tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) if list.is_empty() => return Ok(Vec::new()),
        Some(Value::Array(list)) if list.len() > MAX_TOOLS => {
            return Err(ApiError::param(
                "tools",
                format!("At most {MAX_TOOLS} tools may be offered, got {}.", list.len()),
            ))
        }
        _ => {}
    }
    let tools = parse_objects(f, "tools", "tool", |t| {
        match t.string("type")? {
            None | Some("function") => {}
            Some(other) => {
                return Err(ApiError::param(
                    t.name("type"),
                    format!("Tools of type '{other}' are not supported: only 'function' is."),
                ))
            }
        }
        let fun = t.required_object("function")?;
        let name = fun.required_string("name")?;
        check_name(&fun, name)?;
        fun.boolean("strict")?;
        let parameters = match fun.get("parameters") {
            None => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(other) => return Err(fun.wrong_type("parameters", "a JSON Schema object", other)),
        };
        let description = fun.string("description")?.unwrap_or_default().to_string();
        Ok(Tool { name: name.to_string(), description, parameters })
    })?;
    for (i, t) in tools.iter().enumerate() {
        if tools[..i].iter().any(|u| u.name == t.name) {
            return Err(ApiError::param(format!("tools[{i}]"), format!("Two tools are named '{}'.", t.name)));
        }
    }
    Ok(tools)
}

fn check_name(f: &Fields<'_>, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        return Ok(());
    }
    Err(ApiError::param(
        f.name("name"),
        format!("Invalid '{}': a function name is 1 to {MAX_NAME} letters, digits, '_' or '-'.", f.name("name")),
    ))
}

/// `tool_choice` over `tools`: `"none"` (no tools at all: `None`), `"auto"`
/// (the default), `"required"`, or `{"type": "function", "function":
/// {"name"}}`.
pub fn parse_choice(f: &Fields<'_>, tools: Vec<Tool>) -> Result<Option<Tools>, ApiError> {
    let choice = match f.get("tool_choice") {
        None => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("Invalid 'tool_choice': '{other}'; expected 'none', 'auto', 'required' or a function."),
                ))
            }
        },
        Some(Value::Object(map)) => {
            let c = Fields::nested(map, "tool_choice");
            match c.string("type")? {
                None | Some("function") => {}
                Some(other) => {
                    return Err(ApiError::param("tool_choice.type", format!("Invalid 'tool_choice.type': '{other}'.")))
                }
            }
            let name = c.required_object("function")?.required_string("name")?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::param(
                    "tool_choice.function.name",
                    format!("'tool_choice' names '{name}', which is not among the tools."),
                ));
            }
            Choice::Function(name.to_string())
        }
        Some(other) => return Err(f.wrong_type("tool_choice", "a string or an object", other)),
    };
    if tools.is_empty() {
        return match choice {
            Choice::Auto => Ok(None),
            _ => Err(ApiError::param("tool_choice", "'tool_choice' asks for a call, but no tools were given.")),
        };
    }
    Ok(Some(Tools { tools, choice }))
}

impl Tools {
    /// The tools a call may name.
    fn callable(&self) -> impl Iterator<Item = &Tool> {
        self.tools.iter().filter(move |t| match &self.choice {
            Choice::Function(name) => &t.name == name,
            _ => true,
        })
    }

    /// What the output must be.
    pub fn constraint(&self) -> Constraint {
        let calls: Vec<Value> = self
            .callable()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let schema = if calls.len() == 1 { calls[0].clone() } else { json!({"anyOf": calls}) };
        match self.choice {
            Choice::Auto => Constraint::JsonOrText(schema.to_string()),
            _ => Constraint::JsonSchema(schema.to_string()),
        }
    }

    /// Tells the model about the tools: a system message, or the front of
    /// the one the conversation starts with.
    pub fn describe_to(&self, messages: &mut Vec<Message>) {
        let list: Vec<Value> = self
            .callable()
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
            .collect();
        let ask = match &self.choice {
            Choice::Auto => {
                "To call one, answer with only a JSON object {\"name\": <tool name>, \"arguments\": <its arguments>}; \
                             otherwise answer in plain text."
                    .to_string()
            }
            Choice::Required => {
                "Answer with only a JSON object {\"name\": <tool name>, \"arguments\": <its arguments>} \
                                 that calls one of them."
                    .to_string()
            }
            Choice::Function(name) => format!(
                "Answer with only a JSON object {{\"name\": \"{name}\", \"arguments\": <its arguments>}} that calls it."
            ),
        };
        let text = format!("You can call these tools:\n{}\n{ask}", Value::Array(list));
        match messages.first_mut() {
            Some(first) if first.role == "system" => first.content = format!("{text}\n\n{}", first.content),
            _ => messages.insert(0, Message { role: "system".into(), content: text }),
        }
    }

    /// Whether an answer that begins with `start` is a call.
    pub fn is_call(&self, start: &str) -> bool {
        self.choice != Choice::Auto || start.starts_with('{')
    }

    /// The call `text` makes, if it is a whole one.
    pub fn read_call(&self, text: &str) -> Option<ToolCall> {
        if !self.is_call(text) {
            return None;
        }
        let Value::Object(mut call) = serde_json::from_str::<Value>(text).ok()? else { return None };
        let name = call.get("name")?.as_str()?.to_string();
        let arguments = call.remove("arguments")?;
        self.callable().any(|t| t.name == name).then_some(ToolCall { name, arguments })
    }
}

/// A fresh call id (`call_…`).
pub fn call_id() -> String {
    format!("call_{}", unique_hex())
}

/// How a call is written in the conversation: as the model is asked to
/// write it.
pub fn call_text(name: &str, arguments: &Value) -> String {
    json!({"name": name, "arguments": arguments}).to_string()
}

/// How a tool's result is written in the conversation: a user turn, since
/// not every chat template has a tool role.
pub fn result_message(call_id: Option<&str>, name: Option<&str>, content: &str) -> Message {
    let mut result = Map::new();
    if let Some(id) = call_id {
        result.insert("call_id".into(), Value::from(id));
    }
    if let Some(name) = name {
        result.insert("name".into(), Value::from(name));
    }
    result.insert("content".into(), Value::from(content));
    Message { role: "user".into(), content: json!({"tool_result": result}).to_string() }
}

/// A streamed answer that may call a tool. Prose streams as it comes; once
/// the answer's first text shows it is a call, its text is held back and
/// read as one call at the end.
pub struct StreamedCall {
    tools: Tools,
    /// What the answer is: `None` until its first text.
    held: Option<Option<String>>,
}

/// What a [`StreamedCall`] held back, at the end.
pub enum Held {
    /// Nothing: the answer was prose, all sent.
    Nothing,
    /// A whole call.
    Call(ToolCall),
    /// Text that began like a call but is not one (cut short).
    Text(String),
}

impl StreamedCall {
    pub fn new(tools: Tools) -> Self {
        Self { tools, held: None }
    }

    /// Takes the next piece of text; returns it if it is to be sent now.
    pub fn pass<'a>(&mut self, text: &'a str) -> Option<&'a str> {
        let held = self.held.get_or_insert_with(|| self.tools.is_call(text).then(String::new));
        match held {
            Some(call) => {
                call.push_str(text);
                None
            }
            None => Some(text),
        }
    }

    /// What was held back.
    pub fn finish(&mut self) -> Held {
        match self.held.take().flatten() {
            None => Held::Nothing,
            Some(text) => match self.tools.read_call(&text) {
                Some(call) => Held::Call(call),
                None => Held::Text(text),
            },
        }
    }
}

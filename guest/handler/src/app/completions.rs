//! Chat answers as Open WebUI's frontend asks for them: `POST
//! /api/chat/completions` answers at once with `{status, task_ids,
//! chat_id}`, and the answer follows over Socket.IO (`events`) while the
//! instance generates it after the response.
//!
//! How a turn goes:
//! 1. The request names the model, the user's message (`user_message`,
//!    whose `parentId` is the previous answer) and the id the answer gets
//!    (`id`). Without `chat_id`, a new chat is stored first; with one, the
//!    two messages join its history. The conversation sent to the model is
//!    the stored path from the first message to this one.
//! 2. The answer streams to every session of the user as `chat:completion`
//!    events carrying the whole text so far (the page replaces its copy),
//!    at most one every 40 ms.
//! 3. At the end (or on stop) the answer is saved with `done: true`, and a
//!    new chat gets a title the model writes (`chat:title`); then
//!    `chat:completion {done: true}` and `chat:active {active: false}`.
//!
//! `POST /api/tasks/chat/{id}/stop` (or `/api/tasks/stop/{task}`) sets a
//! flag in the key-value store that the generating instance reads between
//! tokens: it drops the generation, which cancels it in the engine at its
//! next step. Chats whose id starts with `local:` (temporary chats) are
//! answered from the request's own messages and never stored.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::auth::{verified, User};
use super::chats;
use super::socket::emit_to_user;
use super::{now, ok, uuid, AppError, Ctx, Platform};
use crate::engine_client::{Event, GenerationStream, Prompt, Store};
use crate::http::Response;
use crate::json::Fields;
use crate::params::parse_chat_fields;

/// The key-value bucket of running answers: `chat:{id}` → task id,
/// `task:{id}` → `{user, chat}`, `stop:{task}` → set when stopped.
const TASKS: &str = "tern-webui-tasks";
/// Shortest time between two events of a growing answer.
const EMIT_EVERY: Duration = Duration::from_millis(40);
/// Tokens a title may take.
const TITLE_TOKENS: i64 = 16;
/// Longest title kept, in characters.
const TITLE_CHARS: usize = 60;
/// Tokens the tags' JSON may take.
const TAGS_TOKENS: i64 = 48;
/// The instruction the model's tags follow.
const TAGS_INSTRUCTION: &str = "Give one to three short topic tags for the conversation below, as JSON: \
     {\"tags\": [\"...\"]}.";
/// The instruction the model's title follows.
const TITLE_INSTRUCTION: &str = "Write a short title, three to six words, for a conversation that starts with \
     the message below. Answer with the title alone.";

pub fn route(ctx: &mut Ctx<'_>, method: &str, path: &str) -> Result<Response, AppError> {
    match (method, path) {
        ("POST", "/api/chat/completions") => start(ctx),
        // The frontend no longer calls it; older ones sent the chat back.
        ("POST", "/api/chat/completed") => {
            verified(ctx)?;
            ok(Value::Object(ctx.body()?))
        }
        (_, "/api/chat/completions" | "/api/chat/completed") => Err(super::method_not_allowed("POST")),
        _ => {
            let user = verified(ctx)?;
            let store = ctx.engine.store();
            if let Some(rest) = path.strip_prefix("/api/tasks/chat/") {
                let (chat_id, action) = rest.split_once('/').unwrap_or((rest, ""));
                if !chats::exists(&*ctx.db, &user.id, chat_id)? {
                    return Err(AppError::not_found());
                }
                let task = store.get(TASKS, &format!("chat:{chat_id}")).and_then(|t| String::from_utf8(t).ok());
                return match (method, action) {
                    ("GET", "") => ok(json!({"task_ids": task.into_iter().collect::<Vec<_>>()})),
                    ("POST", "stop") => {
                        if let Some(task) = task {
                            stop(store, &task)?;
                        }
                        ok(json!({"status": true}))
                    }
                    (_, "") => Err(super::method_not_allowed("GET")),
                    (_, "stop") => Err(super::method_not_allowed("POST")),
                    _ => Err(AppError::not_found()),
                };
            }
            if let Some(task) = path.strip_prefix("/api/tasks/stop/") {
                if method != "POST" {
                    return Err(super::method_not_allowed("POST"));
                }
                let owner =
                    store.get(TASKS, &format!("task:{task}")).and_then(|v| serde_json::from_slice::<Value>(&v).ok());
                // Another user's task reads as missing.
                if owner.is_none_or(|o| o["user"].as_str() != Some(&user.id)) {
                    return Err(AppError::not_found());
                }
                stop(store, task)?;
                return ok(json!({"status": true}));
            }
            Err(AppError::not_found())
        }
    }
}

fn stop(store: &dyn Store, task: &str) -> Result<(), AppError> {
    store.set(TASKS, &format!("stop:{task}"), b"1").map_err(|e| AppError::new(503, e))
}

/// What one turn is about, read from the request.
struct Turn {
    model: String,
    /// The answer's message id.
    answer_id: String,
    user_message: Map<String, Value>,
    chat_id: Option<String>,
    /// `local:…`: answered from the request's messages, never stored.
    temporary: bool,
    title: bool,
}

fn start(ctx: &mut Ctx<'_>) -> Result<Response, AppError> {
    let user = verified(ctx)?;
    let body = ctx.body()?;
    let turn = read_turn(ctx, &body)?;
    let (chat_id, conversation) = if turn.temporary {
        (turn.chat_id.clone().expect("temporary chats have an id"), request_messages(&body)?)
    } else {
        store_turn(ctx, &user, &turn, &body)?
    };
    let mut request = Map::new();
    request.insert("model".into(), json!(turn.model));
    request.insert("messages".into(), json!(conversation));
    if let Some(Value::Object(params)) = body.get("params") {
        // The chat's and the user's settings; tern's `ignore_eos` too.
        for key in ["temperature", "top_p", "max_tokens", "seed", "ignore_eos"] {
            if let Some(v) = params.get(key).filter(|v| !v.is_null()) {
                request.insert(key.into(), v.clone());
            }
        }
    }
    let stream = open(ctx, &turn.model, &request)?;
    let question = turn.user_message.get("content").and_then(Value::as_str);
    // A title for a new chat, sampled as the answer is (but greedy and short).
    let title = match (turn.title, turn.chat_id.is_none(), question) {
        (true, true, Some(text)) => {
            let text: String = text.chars().take(2000).collect();
            open(ctx, &turn.model, &instructed(request.clone(), TITLE_INSTRUCTION, TITLE_TOKENS, &text)).ok()
        }
        _ => None,
    };
    let task = uuid();
    let store = ctx.engine.store();
    let record = json!({"user": user.id, "chat": chat_id});
    store.set(TASKS, &format!("task:{task}"), record.to_string().as_bytes()).map_err(|e| AppError::new(503, e))?;
    store.set(TASKS, &format!("chat:{chat_id}"), task.as_bytes()).map_err(|e| AppError::new(503, e))?;
    store.delete(TASKS, &format!("stop:{task}"));
    let answer = Answer {
        platform: ctx.platform.share(),
        store: store.share(),
        user: user.id.clone(),
        chat_id: chat_id.clone(),
        answer_id: turn.answer_id,
        task: task.clone(),
        stored: !turn.temporary,
    };
    Ok(Response::json(200, &json!({"status": true, "task_ids": [task], "chat_id": chat_id}))
        .then(move || answer.run(stream, title)))
}

fn read_turn(ctx: &Ctx<'_>, body: &Map<String, Value>) -> Result<Turn, AppError> {
    let f = Fields::new(body);
    let model = f.required_string("model")?.to_string();
    served(ctx, &model)?;
    let answer_id = f.required_string("id")?.to_string();
    let user_message = match body.get("user_message") {
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(AppError::bad_request("'user_message' must be an object.")),
        None => return Err(AppError::bad_request("'user_message' is required.")),
    };
    let m = Fields::new(&user_message);
    let user_message_id = m.required_string("id")?;
    m.required_string("content")?;
    for id in [answer_id.as_str(), user_message_id] {
        if id.is_empty() || id.len() > 100 {
            return Err(AppError::bad_request("Message ids must be 1 to 100 characters."));
        }
    }
    let chat_id = f.string("chat_id")?.filter(|c| !c.is_empty()).map(str::to_string);
    let temporary = chat_id.as_deref().is_some_and(|c| c.starts_with("local:"));
    let title = body.get("background_tasks").and_then(|t| t.get("title_generation")).and_then(Value::as_bool);
    Ok(Turn { model, answer_id, user_message, chat_id, temporary, title: title.unwrap_or(false) })
}

/// A temporary chat's conversation: the request's own `messages`.
fn request_messages(body: &Map<String, Value>) -> Result<Vec<Value>, AppError> {
    match body.get("messages") {
        Some(Value::Array(list)) => Ok(list.clone()),
        _ => Err(AppError::bad_request("A temporary chat sends its 'messages'.")),
    }
}

/// Stores the user's message and an empty answer (in a new chat, or in the
/// caller's chat `chat_id`); the chat's id and the conversation to answer.
fn store_turn(
    ctx: &Ctx<'_>,
    user: &User,
    turn: &Turn,
    body: &Map<String, Value>,
) -> Result<(String, Vec<Value>), AppError> {
    let mut question = turn.user_message.clone();
    let question_id = question["id"].as_str().expect("checked").to_string();
    let parent = question.get("parentId").and_then(Value::as_str).map(str::to_string);
    question.insert("childrenIds".into(), json!([turn.answer_id]));
    question.insert("role".into(), json!("user"));
    let answer = json!({
        "id": turn.answer_id, "parentId": question_id, "childrenIds": [], "role": "assistant",
        "content": "", "model": turn.model, "modelName": turn.model, "modelIdx": 0,
        "timestamp": now(), "done": false,
    });
    let add = |chat: &mut Map<String, Value>| {
        let history = chat.entry("history").or_insert_with(|| json!({}));
        if !history.is_object() {
            *history = json!({});
        }
        let messages = history.as_object_mut().expect("an object").entry("messages").or_insert_with(|| json!({}));
        if !messages.is_object() {
            *messages = json!({});
        }
        let messages = messages.as_object_mut().expect("an object");
        if let Some(Value::Object(p)) = parent.as_ref().and_then(|p| messages.get_mut(p)) {
            let children = p.entry("childrenIds").or_insert_with(|| json!([]));
            if let Value::Array(list) = children {
                if !list.iter().any(|c| c.as_str() == Some(&question_id)) {
                    list.push(json!(question_id));
                }
            }
        }
        messages.insert(question_id.clone(), Value::Object(question.clone()));
        messages.insert(turn.answer_id.clone(), answer.clone());
        history["currentId"] = json!(turn.answer_id);
        chat.insert("models".into(), json!([turn.model]));
    };
    let chat_id = match &turn.chat_id {
        Some(id) => {
            chats::edit(&*ctx.db, &user.id, id, true, add)?;
            id.clone()
        }
        None => {
            let id = uuid();
            let mut chat = Map::new();
            chat.insert("id".into(), json!(id));
            chat.insert("title".into(), json!("New Chat"));
            chat.insert("params".into(), json!({}));
            chat.insert("tags".into(), json!([]));
            chat.insert("timestamp".into(), json!(now() * 1000));
            add(&mut chat);
            chats::insert(&*ctx.db, &user.id, &id, chat)?;
            id
        }
    };
    let stored = ctx
        .db
        .row(
            "SELECT chat FROM chats WHERE id = $1 AND user_id = $2",
            vec![chat_id.clone().into(), user.id.clone().into()],
        )?
        .ok_or_else(AppError::not_found)?
        .json("chat", json!({}));
    let mut conversation = path_to(&stored["history"]["messages"], &question_id);
    // A system prompt comes in the request's messages.
    if let Some(Value::Array(list)) = body.get("messages") {
        let system = list.iter().filter(|m| m["role"] == "system" && m["content"].is_string());
        let system: Vec<Value> = system.map(|m| json!({"role": "system", "content": m["content"]})).collect();
        conversation.splice(0..0, system);
    }
    Ok((chat_id, conversation))
}

/// The messages from the first to `last`, following `parentId`s (a cycle
/// or a missing parent ends the walk).
fn path_to(messages: &Value, last: &str) -> Vec<Value> {
    let mut path = Vec::new();
    let mut at = Some(last.to_string());
    while let Some(id) = at.take() {
        let Some(m) = messages.get(&id) else { break };
        if path.len() > 10_000 {
            break;
        }
        let content = m["content"].as_str().unwrap_or_default();
        let role = if m["role"] == "assistant" { "assistant" } else { "user" };
        path.push(json!({"role": role, "content": content}));
        at = m["parentId"].as_str().map(str::to_string);
    }
    path.reverse();
    path
}

/// An answer being generated after the response, and where it goes.
struct Answer {
    platform: Box<dyn Platform>,
    store: Box<dyn Store>,
    user: String,
    chat_id: String,
    answer_id: String,
    task: String,
    stored: bool,
}

impl Answer {
    fn emit(&self, kind: &str, data: Value) {
        let event =
            json!({"chat_id": self.chat_id, "message_id": self.answer_id, "data": {"type": kind, "data": data}});
        emit_to_user(&*self.platform, &self.user, "events", &event);
    }

    fn stopped(&self) -> bool {
        self.store.get(TASKS, &format!("stop:{}", self.task)).is_some()
    }

    fn run(self, mut stream: Box<dyn GenerationStream>, title: Option<Box<dyn GenerationStream>>) {
        self.emit("chat:active", json!({"active": true}));
        let mut text = String::new();
        let mut usage = Value::Null;
        let mut error = None;
        let mut cancelled = false;
        let mut last_emit = None;
        loop {
            if self.stopped() {
                cancelled = true;
                break;
            }
            match stream.next_event() {
                Ok(Event::Text(piece)) => {
                    text.push_str(&piece);
                    // The whole text so far, at most every EMIT_EVERY: a
                    // fast model would otherwise queue an event a token.
                    if last_emit.is_none_or(|at: Instant| at.elapsed() >= EMIT_EVERY) {
                        self.emit("chat:completion", json!({"content": text}));
                        last_emit = Some(Instant::now());
                    }
                }
                Ok(Event::Finished(f)) => {
                    let u = f.usage;
                    usage = json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                        "total_tokens": u.prompt_tokens + u.completion_tokens});
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    error = Some(format!("{e:?}"));
                    break;
                }
            }
        }
        // Dropped, the generation is cancelled in the engine.
        drop(stream);
        let title = title.and_then(|t| self.title(t));
        if self.stored {
            if let Err(e) = self.save(&text, &usage, error.as_deref(), title.as_deref()) {
                error.get_or_insert(e.detail);
            }
        }
        if let Some(title) = &title {
            self.emit("chat:title", json!(title));
        }
        let mut done = json!({"done": true, "content": text, "usage": usage, "title": title});
        if let Some(e) = &error {
            done["error"] = json!({"content": e});
        }
        self.emit("chat:completion", done);
        if cancelled {
            self.emit("chat:tasks:cancel", json!({}));
        }
        self.emit("chat:active", json!({"active": false}));
        for key in [format!("task:{}", self.task), format!("stop:{}", self.task)] {
            self.store.delete(TASKS, &key);
        }
        if self.store.get(TASKS, &format!("chat:{}", self.chat_id)).as_deref() == Some(self.task.as_bytes()) {
            self.store.delete(TASKS, &format!("chat:{}", self.chat_id));
        }
    }

    fn title(&self, stream: Box<dyn GenerationStream>) -> Option<String> {
        title_of(&read_all(stream))
    }

    fn save(&self, text: &str, usage: &Value, error: Option<&str>, title: Option<&str>) -> Result<(), AppError> {
        let db = self.platform.database()?;
        chats::edit(&*db, &self.user, &self.chat_id, true, |chat| {
            if let Some(answer) =
                chat.get_mut("history").and_then(|h| h.get_mut("messages")).and_then(|m| m.get_mut(&self.answer_id))
            {
                answer["content"] = json!(text);
                answer["done"] = json!(true);
                answer["usage"] = usage.clone();
                if let Some(e) = error {
                    answer["error"] = json!({"content": e});
                }
            }
            if let Some(title) = title {
                chat.insert("title".into(), json!(title));
            }
        })
    }
}

/// Everything a generation says, to its end (or its first error).
fn read_all(mut stream: Box<dyn GenerationStream>) -> String {
    let mut text = String::new();
    loop {
        match stream.next_event() {
            Ok(Event::Text(piece)) => text.push_str(&piece),
            Ok(Event::Finished(_)) | Err(_) => return text,
            Ok(_) => {}
        }
    }
}

/// A title from what the model wrote: its first line, without quotes or
/// Markdown marks, capped.
fn title_of(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line.trim_matches(|c: char| c == '"' || c == '\'' || c == '*' || c == '#').trim();
    let title: String = line.chars().take(TITLE_CHARS).collect();
    (!title.is_empty()).then_some(title)
}

/// `POST /api/v1/tasks/title/completions` and `…/tags/completions` `{model,
/// messages}`: a title, or tags (JSON the grammar holds the model to), for
/// a conversation, answered in OpenAI's shape with the JSON the frontend
/// reads (`{"title"}`, `{"tags"}`) as the message.
pub fn task(ctx: &mut Ctx<'_>, method: &str, kind: &str) -> Result<Response, AppError> {
    if !matches!(kind, "title" | "tags") {
        return Err(AppError::not_found());
    }
    if method != "POST" {
        return Err(super::method_not_allowed("POST"));
    }
    verified(ctx)?;
    let body = ctx.body()?;
    let f = Fields::new(&body);
    let model = f.required_string("model")?.to_string();
    served(ctx, &model)?;
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(AppError::bad_request("'messages' must be a list."));
    };
    let said: Vec<String> =
        messages.iter().filter_map(|m| Some(format!("{}: {}", m["role"].as_str()?, m["content"].as_str()?))).collect();
    // The end of a long conversation says most about it.
    let said = said.join("\n");
    let conversation: String = said.chars().skip(said.chars().count().saturating_sub(4000)).collect();
    let mut base = Map::new();
    base.insert("model".into(), json!(model));
    let content = if kind == "title" {
        let request = instructed(base, TITLE_INSTRUCTION, TITLE_TOKENS, &conversation);
        let title = title_of(&read_all(open(ctx, &model, &request)?)).unwrap_or_else(|| "New Chat".into());
        json!({"title": title})
    } else {
        let mut request = instructed(base, TAGS_INSTRUCTION, TAGS_TOKENS, &conversation);
        let schema = json!({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["tags"]});
        let format = json!({"type": "json_schema", "json_schema": {"name": "tags", "schema": schema}});
        request.insert("response_format".into(), format);
        // Cut off before its end, the JSON is incomplete: no tags then.
        let text = read_all(open(ctx, &model, &request)?);
        serde_json::from_str::<Value>(&text)
            .ok()
            .filter(|v| v["tags"].is_array())
            .unwrap_or_else(|| json!({"tags": []}))
    };
    ok(json!({
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content.to_string()}}],
    }))
}

/// A 404 unless the engine serves `model`.
fn served(ctx: &Ctx<'_>, model: &str) -> Result<(), AppError> {
    if ctx.engine.list_models().iter().any(|m| m.id == model) {
        Ok(())
    } else {
        Err(AppError::new(404, format!("Model '{model}' not found.")))
    }
}

/// `request` (a chat request's JSON fields) asking, greedily and in at most
/// `max_tokens`, what `instruction` says of `text`.
fn instructed(mut request: Map<String, Value>, instruction: &str, max_tokens: i64, text: &str) -> Map<String, Value> {
    request.insert("temperature".into(), json!(0));
    request.insert("max_tokens".into(), json!(max_tokens));
    request.insert(
        "messages".into(),
        json!([{"role": "system", "content": instruction}, {"role": "user", "content": text}]),
    );
    request
}

/// Starts the generation a chat request given as its JSON fields asks for.
fn open(ctx: &Ctx<'_>, model: &str, request: &Map<String, Value>) -> Result<Box<dyn GenerationStream>, AppError> {
    let chat = parse_chat_fields(request, crate::engine_client::Priority::Interactive)?;
    ctx.engine
        .generate(model, &Prompt::Chat(chat.messages), &chat.params)
        .map_err(|e| AppError::from(crate::error::ApiError::engine(e, "messages")))
}

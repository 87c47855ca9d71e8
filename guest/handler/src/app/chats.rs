//! `/api/v1/chats/*`: a user's chats, their archive, pins, tags and shared
//! copies. Every statement names the caller's id, so another user's chat
//! reads as missing (404); an admin reaches others' chats only through the
//! admin routes (`/list/user/{id}`, `/all/db`).
//!
//! An update merges: the stored document's top-level keys are replaced by
//! the request's, except `history.messages`, which is merged by message id.
//! It runs in a transaction holding the row, so two clients updating one
//! chat at once both land (each adds its messages; for any other key the
//! later write wins).

use serde_json::{json, Map, Value};

use super::auth::{admin, verified, User};
use super::db::{like_pattern, Db, Row, Val};
use super::{method_not_allowed, now, ok, uuid, AppError, Ctx};
use crate::http::Response;
use crate::json::Fields;

/// Chats per page (Open WebUI's).
const PAGE_SIZE: u64 = 60;
/// Longest title stored.
const MAX_TITLE_CHARS: usize = 1000;

const COLUMNS: &str = "id, user_id, title, chat, share_id, archived, pinned, meta, folder_id, created_at, updated_at";

pub fn route(ctx: &mut Ctx<'_>, method: &str, rest: &str) -> Result<Response, AppError> {
    let user = match rest {
        "all/db" => admin(ctx)?,
        _ if rest.starts_with("list/user/") => admin(ctx)?,
        _ => verified(ctx)?,
    };
    match (method, rest) {
        ("GET", "" | "list") => {
            let with_pinned = ctx.req.query_param("include_pinned").as_deref() == Some("true");
            list(ctx, &user, if with_pinned { "archived = 0" } else { "archived = 0 AND pinned = 0" }, None)
        }
        ("DELETE", "") => delete_all(ctx, &user),
        ("POST", "new") => create(ctx, &user),
        ("GET", "pinned") => list(ctx, &user, "archived = 0 AND pinned = 1", None),
        ("GET", "archived") => list(ctx, &user, "archived = 1", None),
        ("GET", "archived/count") => {
            let row = ctx.db.row(
                "SELECT COUNT(*) AS n FROM chats WHERE user_id = $1 AND archived = 1",
                vec![user.id.clone().into()],
            )?;
            ok(json!(row.map_or(0, |r| r.int("n"))))
        }
        ("POST", "unarchive/all") => {
            let sql = "UPDATE chats SET archived = 0, updated_at = $1 WHERE user_id = $2 AND archived = 1";
            ctx.db.execute(sql, vec![now().into(), user.id.clone().into()])?;
            ok(json!(true))
        }
        ("GET", "search") => {
            let text = ctx.req.query_param("text").unwrap_or_default();
            list(ctx, &user, "archived = 0", Some(text))
        }
        ("GET", "all/archived") => full_list(ctx, &user.id, "archived = 1"),
        ("GET", "all/tags") => all_tags(ctx, &user),
        ("GET", "all/db") => {
            let rows = ctx.db.query(&format!("SELECT {COLUMNS} FROM chats ORDER BY updated_at DESC, id"), vec![])?;
            ok(Value::Array(rows.iter().map(chat_json).collect()))
        }
        ("POST", "archive/all") => {
            let sql = "UPDATE chats SET archived = 1, folder_id = NULL, updated_at = $1 WHERE user_id = $2";
            ctx.db.execute(sql, vec![now().into(), user.id.clone().into()])?;
            ok(json!(true))
        }
        ("POST", "tags") => by_tag(ctx, &user),
        _ if rest.starts_with("share/") => shared(ctx, &rest["share/".len()..]),
        _ if rest.starts_with("list/user/") => {
            let owner = &rest["list/user/".len()..];
            let rows = ctx.db.query(
                &format!("SELECT {COLUMNS} FROM chats WHERE user_id = $1 ORDER BY updated_at DESC, id"),
                vec![owner.into()],
            )?;
            ok(Value::Array(rows.iter().map(title_json).collect()))
        }
        (
            _,
            "" | "list" | "new" | "pinned" | "archived" | "archived/count" | "search" | "all/archived" | "all/tags"
            | "archive/all" | "unarchive/all",
        ) => Err(method_not_allowed(match rest {
            "" => "GET, DELETE",
            "new" | "archive/all" | "unarchive/all" => "POST",
            _ => "GET",
        })),
        _ => {
            let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
            match (method, action) {
                ("GET", "") => ok(chat_json(&own(ctx, &user, id)?)),
                ("POST", "") => update(ctx, &user, id),
                ("DELETE", "") => delete(ctx, &user, id),
                ("POST", "archive") => toggle(ctx, &user, id, "archived"),
                ("POST", "pin") => toggle(ctx, &user, id, "pinned"),
                ("GET", "pinned") => ok(json!(own(ctx, &user, id)?.flag("pinned"))),
                ("POST", "share") => share(ctx, &user, id),
                ("DELETE", "share") => unshare(ctx, &user, id),
                ("GET", "tags") => chat_tags(ctx, &user, id),
                ("POST", "tags") => add_tag(ctx, &user, id),
                ("DELETE", "tags") => remove_tag(ctx, &user, id),
                ("POST", "clone") => clone(ctx, &user, id),
                (_, "" | "archive" | "pin" | "pinned" | "share" | "tags" | "clone") => {
                    Err(method_not_allowed(match action {
                        "" => "GET, POST, DELETE",
                        "share" => "POST, DELETE",
                        "tags" => "GET, POST, DELETE",
                        "pinned" => "GET",
                        _ => "POST",
                    }))
                }
                _ => Err(AppError::not_found()),
            }
        }
    }
}

fn chat_json(row: &Row) -> Value {
    json!({
        "id": row.text("id"),
        "user_id": row.text("user_id"),
        "title": row.text("title"),
        "chat": row.json("chat", json!({})),
        "updated_at": row.int("updated_at"),
        "created_at": row.int("created_at"),
        "share_id": row.opt_text("share_id"),
        "archived": row.flag("archived"),
        "pinned": row.flag("pinned"),
        "meta": row.json("meta", json!({})),
        "folder_id": row.opt_text("folder_id"),
    })
}

fn title_json(row: &Row) -> Value {
    json!({
        "id": row.text("id"),
        "title": row.text("title"),
        "updated_at": row.int("updated_at"),
        "created_at": row.int("created_at"),
        "archived": row.flag("archived"),
    })
}

/// The caller's chat `id`; another user's is missing.
fn own(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Row, AppError> {
    ctx.db
        .row(
            &format!("SELECT {COLUMNS} FROM chats WHERE id = $1 AND user_id = $2"),
            vec![id.into(), user.id.clone().into()],
        )?
        .ok_or_else(AppError::not_found)
}

/// A title from a chat document: its `title`, trimmed and capped, else
/// "New Chat".
fn title_of(chat: &Map<String, Value>) -> String {
    let title = chat.get("title").and_then(Value::as_str).map(str::trim).unwrap_or_default();
    if title.is_empty() {
        "New Chat".to_string()
    } else {
        title.chars().take(MAX_TITLE_CHARS).collect()
    }
}

/// The `chat` object of a create or update request.
fn chat_field(ctx: &Ctx<'_>) -> Result<Map<String, Value>, AppError> {
    match ctx.body()?.remove("chat") {
        Some(Value::Object(chat)) => Ok(chat),
        Some(_) => Err(AppError::bad_request("'chat' must be an object.")),
        None => Err(AppError::bad_request("'chat' is required.")),
    }
}

fn list(ctx: &Ctx<'_>, user: &User, filter: &str, search: Option<String>) -> Result<Response, AppError> {
    let mut params: Vec<Val> = vec![user.id.clone().into()];
    let mut sql = format!("SELECT {COLUMNS} FROM chats WHERE user_id = $1 AND {filter}");
    if let Some(text) = search {
        params.push(like_pattern(&text).into());
        sql.push_str(" AND LOWER(title) LIKE $2 ESCAPE '\\'");
    }
    sql.push_str(" ORDER BY updated_at DESC, id");
    if let Some(page) = ctx.page()? {
        let n = params.len();
        sql.push_str(&format!(" LIMIT ${} OFFSET ${}", n + 1, n + 2));
        params.push((PAGE_SIZE as i64).into());
        params.push((((page - 1) * PAGE_SIZE) as i64).into());
    }
    let rows = ctx.db.query(&sql, params)?;
    ok(Value::Array(rows.iter().map(title_json).collect()))
}

fn full_list(ctx: &Ctx<'_>, owner: &str, filter: &str) -> Result<Response, AppError> {
    let rows = ctx.db.query(
        &format!("SELECT {COLUMNS} FROM chats WHERE user_id = $1 AND {filter} ORDER BY updated_at DESC, id"),
        vec![owner.into()],
    )?;
    ok(Value::Array(rows.iter().map(chat_json).collect()))
}

fn create(ctx: &Ctx<'_>, user: &User) -> Result<Response, AppError> {
    let chat = chat_field(ctx)?;
    let id = uuid();
    insert(&*ctx.db, &user.id, &id, chat)?;
    ok(chat_json(&own(ctx, user, &id)?))
}

/// `incoming` merged into `stored` (see the module's note).
fn merge(mut stored: Map<String, Value>, incoming: Map<String, Value>) -> Map<String, Value> {
    for (key, value) in incoming {
        if key == "history" {
            let mut history = stored.remove("history").and_then(|h| h.as_object().cloned()).unwrap_or_default();
            if let Value::Object(new) = value {
                let mut messages = history.remove("messages").and_then(|m| m.as_object().cloned()).unwrap_or_default();
                for (k, v) in new {
                    match (k.as_str(), v) {
                        ("messages", Value::Object(m)) => messages.extend(m),
                        (_, v) => {
                            history.insert(k, v);
                        }
                    }
                }
                history.insert("messages".into(), Value::Object(messages));
            }
            stored.insert(key, Value::Object(history));
        } else {
            stored.insert(key, value);
        }
    }
    stored
}

fn update(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Response, AppError> {
    let incoming = chat_field(ctx)?;
    let touches_messages = incoming.contains_key("history") || incoming.contains_key("messages");
    edit(&*ctx.db, &user.id, id, touches_messages, |stored| *stored = merge(std::mem::take(stored), incoming))?;
    ok(chat_json(&own(ctx, user, id)?))
}

/// Changes `owner`'s stored chat document `id` in a transaction holding the
/// row, keeping the title column equal to the document's `title`; `touch`
/// moves the chat to the top of the list. Another user's chat is missing.
pub fn edit(
    db: &dyn Db,
    owner: &str,
    id: &str,
    touch: bool,
    change: impl FnOnce(&mut Map<String, Value>),
) -> Result<(), AppError> {
    db.transaction(|db| {
        let sql = format!("SELECT chat, updated_at FROM chats WHERE id = $1 AND user_id = $2{}", db.for_update());
        let row = db.row(&sql, vec![id.into(), owner.into()])?.ok_or_else(AppError::not_found)?;
        let mut chat = row.json("chat", json!({})).as_object().cloned().unwrap_or_default();
        change(&mut chat);
        let updated_at = if touch { now() } else { row.int("updated_at") };
        db.execute(
            "UPDATE chats SET chat = $1, title = $2, updated_at = $3 WHERE id = $4 AND user_id = $5",
            vec![
                Value::Object(chat.clone()).to_string().into(),
                title_of(&chat).into(),
                updated_at.into(),
                id.into(),
                owner.into(),
            ],
        )
        .map(drop)
    })
}

/// Stores a new chat `id` of `owner`.
pub fn insert(db: &dyn Db, owner: &str, id: &str, chat: Map<String, Value>) -> Result<(), AppError> {
    db.execute(
        "INSERT INTO chats (id, user_id, title, chat, meta, created_at, updated_at) VALUES ($1, $2, $3, $4, '{}', $5, $5)",
        vec![id.into(), owner.into(), title_of(&chat).into(), Value::Object(chat).to_string().into(), now().into()],
    )
    .map(drop)
}

/// Whether `owner` has a chat `id`.
pub fn exists(db: &dyn Db, owner: &str, id: &str) -> Result<bool, AppError> {
    Ok(db.row("SELECT id FROM chats WHERE id = $1 AND user_id = $2", vec![id.into(), owner.into()])?.is_some())
}

fn delete(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Response, AppError> {
    own(ctx, user, id)?;
    ctx.db.transaction(|db| {
        db.execute(
            "DELETE FROM shared_chats WHERE chat_id = $1 AND user_id = $2",
            vec![id.into(), user.id.clone().into()],
        )?;
        db.execute("DELETE FROM chats WHERE id = $1 AND user_id = $2", vec![id.into(), user.id.clone().into()])
    })?;
    ok(json!(true))
}

fn delete_all(ctx: &Ctx<'_>, user: &User) -> Result<Response, AppError> {
    ctx.db.transaction(|db| {
        db.execute("DELETE FROM shared_chats WHERE user_id = $1", vec![user.id.clone().into()])?;
        db.execute("DELETE FROM chats WHERE user_id = $1", vec![user.id.clone().into()])?;
        db.execute("DELETE FROM tags WHERE user_id = $1", vec![user.id.clone().into()])
    })?;
    ok(json!(true))
}

/// Flips `archived` or `pinned`; archiving also leaves the chat's folder.
fn toggle(ctx: &Ctx<'_>, user: &User, id: &str, column: &str) -> Result<Response, AppError> {
    own(ctx, user, id)?;
    let sql = match column {
        "archived" => {
            "UPDATE chats SET archived = 1 - archived, folder_id = NULL, updated_at = $1 WHERE id = $2 AND user_id = $3"
        }
        _ => "UPDATE chats SET pinned = 1 - pinned, updated_at = $1 WHERE id = $2 AND user_id = $3",
    };
    ctx.db.execute(sql, vec![now().into(), id.into(), user.id.clone().into()])?;
    ok(chat_json(&own(ctx, user, id)?))
}

/// Shares a snapshot of the chat: readable by any signed-in user at
/// `/share/{share_id}`; sharing again refreshes the snapshot.
fn share(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Response, AppError> {
    let row = own(ctx, user, id)?;
    let t = now();
    ctx.db.transaction(|db| {
        let share_id = row.opt_text("share_id").unwrap_or_else(uuid);
        db.execute("DELETE FROM shared_chats WHERE chat_id = $1", vec![id.into()])?;
        db.execute(
            "INSERT INTO shared_chats (id, chat_id, user_id, title, chat, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
            vec![
                share_id.clone().into(),
                id.into(),
                user.id.clone().into(),
                row.text("title").into(),
                row.text("chat").into(),
                t.into(),
            ],
        )?;
        db.execute(
            "UPDATE chats SET share_id = $1 WHERE id = $2 AND user_id = $3",
            vec![share_id.into(), id.into(), user.id.clone().into()],
        )
    })?;
    ok(chat_json(&own(ctx, user, id)?))
}

fn unshare(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Response, AppError> {
    own(ctx, user, id)?;
    ctx.db.transaction(|db| {
        db.execute(
            "DELETE FROM shared_chats WHERE chat_id = $1 AND user_id = $2",
            vec![id.into(), user.id.clone().into()],
        )?;
        db.execute(
            "UPDATE chats SET share_id = NULL WHERE id = $1 AND user_id = $2",
            vec![id.into(), user.id.clone().into()],
        )
    })?;
    ok(json!(true))
}

/// A shared snapshot, as a chat whose id is the share id.
fn shared(ctx: &Ctx<'_>, share_id: &str) -> Result<Response, AppError> {
    let row = ctx
        .db
        .row(
            "SELECT id, chat_id, user_id, title, chat, created_at, updated_at FROM shared_chats WHERE id = $1",
            vec![share_id.into()],
        )?
        .ok_or_else(AppError::not_found)?;
    ok(json!({
        "id": row.text("id"),
        "user_id": row.text("user_id"),
        "title": row.text("title"),
        "chat": row.json("chat", json!({})),
        "updated_at": row.int("updated_at"),
        "created_at": row.int("created_at"),
        "share_id": row.text("id"),
        "archived": false,
        "pinned": false,
        "meta": {},
        "folder_id": null,
    }))
}

fn clone(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Response, AppError> {
    let row = own(ctx, user, id)?;
    let body = ctx.body()?;
    let title = match Fields::new(&body).string("title")? {
        Some(t) => t.to_string(),
        None => format!("Clone of {}", row.text("title")),
    };
    let mut chat = row.json("chat", json!({})).as_object().cloned().unwrap_or_default();
    chat.insert("title".into(), json!(title));
    chat.insert("originalChatId".into(), json!(id));
    let new_id = uuid();
    ctx.db.execute(
        "INSERT INTO chats (id, user_id, title, chat, meta, pinned, folder_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        vec![
            new_id.clone().into(),
            user.id.clone().into(),
            title_of(&chat).into(),
            Value::Object(chat).to_string().into(),
            row.text("meta").into(),
            row.int("pinned").into(),
            row.opt_text("folder_id").into(),
            now().into(),
        ],
    )?;
    ok(chat_json(&own(ctx, user, &new_id)?))
}

/// A tag's id: its name in lower case, spaces as `_`.
fn tag_id(name: &str) -> String {
    name.trim().to_lowercase().replace(' ', "_")
}

fn tag_name(ctx: &Ctx<'_>) -> Result<String, AppError> {
    let body = ctx.body()?;
    let name = Fields::new(&body).required_string("name")?.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(AppError::bad_request("A tag name must be 1 to 200 characters, without control characters."));
    }
    Ok(name)
}

fn tags_of(row: &Row) -> Vec<String> {
    let meta = row.json("meta", json!({}));
    meta.get("tags")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).map(String::from).collect())
        .unwrap_or_default()
}

fn tag_models(ctx: &Ctx<'_>, user: &User, ids: &[String]) -> Result<Value, AppError> {
    let mut out = Vec::new();
    for id in ids {
        if let Some(tag) = ctx
            .db
            .row("SELECT id, name FROM tags WHERE id = $1 AND user_id = $2", vec![id.into(), user.id.clone().into()])?
        {
            out.push(json!({"id": tag.text("id"), "name": tag.text("name"), "user_id": user.id, "meta": null}));
        }
    }
    Ok(Value::Array(out))
}

fn chat_tags(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Response, AppError> {
    let row = own(ctx, user, id)?;
    ok(tag_models(ctx, user, &tags_of(&row))?)
}

fn set_tags(ctx: &Ctx<'_>, user: &User, id: &str, row: &Row, tags: &[String]) -> Result<(), AppError> {
    let mut meta = row.json("meta", json!({})).as_object().cloned().unwrap_or_default();
    meta.insert("tags".into(), json!(tags));
    ctx.db.execute(
        "UPDATE chats SET meta = $1 WHERE id = $2 AND user_id = $3",
        vec![Value::Object(meta).to_string().into(), id.into(), user.id.clone().into()],
    )?;
    Ok(())
}

fn add_tag(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Response, AppError> {
    let name = tag_name(ctx)?;
    let tag = tag_id(&name);
    let row = own(ctx, user, id)?;
    let mut tags = tags_of(&row);
    ctx.db.transaction(|db| {
        if db
            .row(
                "SELECT id FROM tags WHERE id = $1 AND user_id = $2",
                vec![tag.clone().into(), user.id.clone().into()],
            )?
            .is_none()
        {
            db.execute(
                "INSERT INTO tags (id, user_id, name) VALUES ($1, $2, $3)",
                vec![tag.clone().into(), user.id.clone().into(), name.into()],
            )?;
        }
        Ok(())
    })?;
    if !tags.contains(&tag) {
        tags.push(tag);
        set_tags(ctx, user, id, &row, &tags)?;
    }
    ok(tag_models(ctx, user, &tags)?)
}

fn remove_tag(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Response, AppError> {
    let tag = tag_id(&tag_name(ctx)?);
    let row = own(ctx, user, id)?;
    let tags: Vec<String> = tags_of(&row).into_iter().filter(|t| *t != tag).collect();
    set_tags(ctx, user, id, &row, &tags)?;
    ok(tag_models(ctx, user, &tags)?)
}

fn all_tags(ctx: &Ctx<'_>, user: &User) -> Result<Response, AppError> {
    let rows =
        ctx.db.query("SELECT id, name FROM tags WHERE user_id = $1 ORDER BY name", vec![user.id.clone().into()])?;
    ok(Value::Array(
        rows.iter()
            .map(|t| json!({"id": t.text("id"), "name": t.text("name"), "user_id": user.id, "meta": null}))
            .collect(),
    ))
}

fn by_tag(ctx: &Ctx<'_>, user: &User) -> Result<Response, AppError> {
    let tag = tag_id(&tag_name(ctx)?);
    let rows = ctx.db.query(
        &format!("SELECT {COLUMNS} FROM chats WHERE user_id = $1 AND archived = 0 ORDER BY updated_at DESC, id"),
        vec![user.id.clone().into()],
    )?;
    ok(Value::Array(rows.iter().filter(|r| tags_of(r).contains(&tag)).map(title_json).collect()))
}

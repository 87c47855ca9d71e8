//! `/api/v1/users/*`: the admin's list and edits of accounts, and each
//! user's own settings and info.
//!
//! The earliest admin (the first account) is the primary admin: nobody can
//! delete them, and only they can change their own account; no admin can
//! delete themselves.

use base64::Engine as _;
use serde_json::{json, Value};

use super::auth::{self, admin, set_password, user_json, verified, USER_COLUMNS};
use super::db::{like_pattern, Val};
use super::{messages, method_not_allowed, now, ok, AppError, Ctx};
use crate::http::Response;
use crate::json::Fields;

/// Users per page of the admin's list.
const PAGE_SIZE: u64 = 30;

pub fn route(ctx: &mut Ctx<'_>, method: &str, rest: &str) -> Result<Response, AppError> {
    match (method, rest) {
        ("GET", "") => list(ctx),
        ("GET", "user/settings") => own_json(ctx, "settings"),
        ("POST", "user/settings/update") => update_own_json(ctx, "settings", false),
        ("GET", "user/info") => own_json(ctx, "info"),
        ("POST", "user/info/update") => update_own_json(ctx, "info", true),
        ("GET", "permissions") => {
            verified(ctx)?;
            ok(auth::permissions())
        }
        (_, "" | "user/settings" | "user/settings/update" | "user/info" | "user/info/update") => {
            Err(method_not_allowed(if rest.ends_with("update") { "POST" } else { "GET" }))
        }
        _ => {
            let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
            match (method, action) {
                ("GET", "") => get(ctx, id),
                ("GET", "profile/image") => profile_image(ctx, id),
                // tern has no user groups.
                ("GET", "groups") => {
                    let caller = verified(ctx)?;
                    if caller.id != id && !caller.is_admin() {
                        return Err(AppError::forbidden());
                    }
                    find(ctx, id)?;
                    ok(json!([]))
                }
                ("DELETE", "") => delete(ctx, id),
                ("POST", "update") => update(ctx, id),
                (_, "") => Err(method_not_allowed("GET, DELETE")),
                (_, "update") => Err(method_not_allowed("POST")),
                _ => Err(AppError::not_found()),
            }
        }
    }
}

fn list(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    admin(ctx)?;
    let page = ctx.page()?.unwrap_or(1);
    let query = ctx.req.query_param("query").unwrap_or_default();
    let order = match ctx.req.query_param("order_by").as_deref() {
        Some("name") => "name",
        Some("email") => "email",
        Some("role") => "role",
        Some("last_active_at") => "last_active_at",
        Some("updated_at") => "updated_at",
        _ => "created_at",
    };
    let direction = if ctx.req.query_param("direction").as_deref() == Some("asc") { "ASC" } else { "DESC" };
    let filter = "(LOWER(name) LIKE $1 ESCAPE '\\' OR email LIKE $1 ESCAPE '\\')";
    let pattern: Val = like_pattern(&query).into();
    let total = ctx.db.count(&format!("SELECT COUNT(*) FROM users WHERE {filter}"), vec![pattern.clone()])?;
    let rows = ctx.db.query(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE {filter} ORDER BY {order} {direction}, id LIMIT $2 OFFSET $3"),
        vec![pattern, (PAGE_SIZE as i64).into(), (((page - 1) * PAGE_SIZE) as i64).into()],
    )?;
    ok(json!({"users": rows.iter().map(user_json).collect::<Vec<_>>(), "total": total}))
}

fn find(ctx: &Ctx<'_>, id: &str) -> Result<super::Row, AppError> {
    ctx.db
        .row(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"), vec![id.into()])?
        .ok_or_else(AppError::not_found)
}

fn primary_admin(ctx: &Ctx<'_>) -> Result<Option<String>, AppError> {
    let sql = "SELECT id FROM users WHERE role = 'admin' ORDER BY created_at, id LIMIT 1";
    let row = ctx.db.row(sql, vec![])?;
    Ok(row.map(|r| r.text("id")))
}

fn get(ctx: &Ctx<'_>, id: &str) -> Result<Response, AppError> {
    admin(ctx)?;
    ok(user_json(&find(ctx, id)?))
}

fn update(ctx: &Ctx<'_>, id: &str) -> Result<Response, AppError> {
    let me = admin(ctx)?;
    let target = find(ctx, id)?;
    let primary = primary_admin(ctx)?;
    let body = ctx.body()?;
    let f = Fields::new(&body);
    if primary.as_deref() == Some(id) && me.id != id {
        return Err(AppError::new(403, messages::ACTION_PROHIBITED));
    }
    let role = match f.string("role")? {
        Some(role) if !auth::ROLES.contains(&role) => {
            return Err(AppError::bad_request("'role' must be admin, user or pending."))
        }
        Some(role) if primary.as_deref() == Some(id) && role != "admin" => {
            return Err(AppError::new(403, messages::ACTION_PROHIBITED))
        }
        Some(role) => role.to_string(),
        None => target.text("role"),
    };
    let name = match f.string("name")? {
        Some(name) => auth::check_name(name)?,
        None => target.text("name"),
    };
    let email = match f.string("email")? {
        Some(email) => auth::normalize_email(email)?,
        None => target.text("email"),
    };
    let image = f.string("profile_image_url")?.map(String::from).unwrap_or_else(|| target.text("profile_image_url"));
    let password = f.string("password")?.filter(|p| !p.is_empty());
    ctx.db.transaction(|db| {
        let taken =
            db.row("SELECT id FROM users WHERE email = $1 AND id <> $2", vec![email.clone().into(), id.into()])?;
        if taken.is_some() {
            return Err(AppError::bad_request(messages::EMAIL_TAKEN));
        }
        db.execute(
            "UPDATE users SET role = $1, name = $2, email = $3, profile_image_url = $4, updated_at = $5 WHERE id = $6",
            vec![role.into(), name.into(), email.into(), image.into(), now().into(), id.into()],
        )?;
        if let Some(password) = password {
            set_password(db, id, password)?;
        }
        Ok(())
    })?;
    ok(user_json(&find(ctx, id)?))
}

fn delete(ctx: &Ctx<'_>, id: &str) -> Result<Response, AppError> {
    let me = admin(ctx)?;
    if me.id == id || primary_admin(ctx)?.as_deref() == Some(id) {
        return Err(AppError::new(403, messages::ACTION_PROHIBITED));
    }
    find(ctx, id)?;
    ctx.db.transaction(|db| {
        let shared = format!("shared-{id}");
        db.execute("DELETE FROM shared_chats WHERE user_id = $1", vec![id.into()])?;
        db.execute("DELETE FROM chats WHERE user_id = $1 OR user_id = $2", vec![id.into(), shared.into()])?;
        db.execute("DELETE FROM tags WHERE user_id = $1", vec![id.into()])?;
        db.execute("DELETE FROM files WHERE user_id = $1", vec![id.into()])?;
        db.execute("DELETE FROM users WHERE id = $1", vec![id.into()])
    })?;
    ok(json!(true))
}

/// The caller's own `settings` or `info` (null when never set).
fn own_json(ctx: &Ctx<'_>, column: &str) -> Result<Response, AppError> {
    let user = verified(ctx)?;
    ok(user.row.json(column, Value::Null))
}

/// Replaces (settings) or merges into (info) the caller's own document.
fn update_own_json(ctx: &Ctx<'_>, column: &str, merge: bool) -> Result<Response, AppError> {
    let user = verified(ctx)?;
    let body = ctx.body()?;
    let mut value = if merge { user.row.json(column, json!({})) } else { json!({}) };
    if let Value::Object(target) = &mut value {
        target.extend(body);
    }
    let sql = match column {
        "settings" => "UPDATE users SET settings = $1, updated_at = $2 WHERE id = $3",
        _ => "UPDATE users SET info = $1, updated_at = $2 WHERE id = $3",
    };
    ctx.db.execute(sql, vec![auth::json_text(&value), now().into(), user.id.into()])?;
    ok(value)
}

/// `GET /api/v1/users/{id}/profile/image` (any signed-in user, as avatars
/// show beside shared chats): the account's picture. A `data:` URL set at
/// sign-up is decoded; anything else redirects (the default `/user.png`).
fn profile_image(ctx: &Ctx<'_>, id: &str) -> Result<Response, AppError> {
    auth::current(ctx)?;
    let url = find(ctx, id)?.text("profile_image_url");
    if let Some((kind, data)) = url.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")) {
        let image = matches!(kind, "image/png" | "image/jpeg" | "image/gif" | "image/webp");
        if let (true, Ok(bytes)) = (image, base64::engine::general_purpose::STANDARD.decode(data)) {
            return Ok(Response::text(200, kind, bytes)
                .with_header("cache-control", "private, max-age=60")
                .with_header("x-content-type-options", "nosniff"));
        }
    }
    let local = url.starts_with('/') && !url.starts_with("//");
    Ok(Response::empty(302).with_header("location", if local { &url } else { "/user.png" }))
}

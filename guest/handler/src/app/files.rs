//! `/api/v1/files/*`: uploads (multipart, field `file`, up to the host's
//! `max_upload_bytes`), lists, metadata, contents and deletion.
//!
//! Contents live in the database beside their metadata, so every replica
//! sharing the database serves them and a file is stored whole or not at
//! all. A file's name is only ever data: stored without folders or control
//! characters, sent back percent-encoded in `Content-Disposition`, never
//! part of a path.

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::auth::{admin, verified, User};
use super::db::{Db, Row, Val};
use super::multipart;
use super::{method_not_allowed, now, ok, uuid, AppError, Ctx};
use crate::http::Response;

/// Files per page.
const PAGE_SIZE: u64 = 50;
/// Longest name stored, in bytes.
const MAX_NAME_BYTES: usize = 255;

const META_COLUMNS: &str = "id, user_id, filename, hash, content_type, size, meta, created_at, updated_at";

pub fn route(ctx: &mut Ctx<'_>, method: &str, rest: &str) -> Result<Response, AppError> {
    let user = verified(ctx)?;
    match (method, rest) {
        ("POST", "") => upload(ctx, &user),
        ("GET", "") => list(ctx, &user),
        ("DELETE", "all") => {
            admin(ctx)?;
            ctx.db.execute("DELETE FROM files", vec![])?;
            ok(json!({"message": "All files deleted successfully"}))
        }
        (_, "") => Err(method_not_allowed("GET, POST")),
        _ => {
            let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
            match (method, action) {
                ("GET", "") => ok(file_json(&own(ctx, &user, id)?)),
                ("GET", "content") => content(ctx, &user, id),
                ("DELETE", "") => {
                    own(ctx, &user, id)?;
                    ctx.db.execute(
                        "DELETE FROM files WHERE id = $1 AND user_id = $2",
                        vec![id.into(), user.id.clone().into()],
                    )?;
                    ok(json!({"message": "File deleted successfully"}))
                }
                (_, "") => Err(method_not_allowed("GET, DELETE")),
                (_, "content") => Err(method_not_allowed("GET")),
                _ => Err(AppError::not_found()),
            }
        }
    }
}

fn file_json(row: &Row) -> Value {
    json!({
        "id": row.text("id"),
        "user_id": row.text("user_id"),
        "hash": row.text("hash"),
        "filename": row.text("filename"),
        "data": {},
        "meta": row.json("meta", json!({})),
        "created_at": row.int("created_at"),
        "updated_at": row.int("updated_at"),
    })
}

/// The caller's file `id` (metadata only); another user's is missing.
fn own(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Row, AppError> {
    ctx.db
        .row(
            &format!("SELECT {META_COLUMNS} FROM files WHERE id = $1 AND user_id = $2"),
            vec![id.into(), user.id.clone().into()],
        )?
        .ok_or_else(AppError::not_found)
}

/// A file name as stored: its last path component, without control
/// characters, at most [`MAX_NAME_BYTES`]; never empty.
pub fn clean_name(given: &str) -> String {
    let base = given.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut name: String = base.chars().filter(|c| !c.is_control()).collect();
    name = name.trim().to_string();
    if name.is_empty() || name == "." || name == ".." {
        name = "file".to_string();
    }
    if name.len() > MAX_NAME_BYTES {
        name.truncate(name.floor_char_boundary(MAX_NAME_BYTES));
    }
    name
}

fn upload(ctx: &Ctx<'_>, user: &User) -> Result<Response, AppError> {
    let content_type = ctx.req.header("content-type").unwrap_or_default();
    let boundary = multipart::boundary(content_type)
        .ok_or_else(|| AppError::bad_request("An upload is a multipart/form-data body with a 'file' field."))?;
    let parts = multipart::parse(&ctx.req.body, &boundary)
        .map_err(|why| AppError::bad_request(format!("The multipart body is malformed: {why}.")))?;
    let file = parts
        .iter()
        .find(|p| p.name == "file")
        .ok_or_else(|| AppError::bad_request("The upload has no 'file' field."))?;
    let limit: usize = ctx.platform.setting("max_upload_bytes").and_then(|s| s.parse().ok()).unwrap_or(25 << 20);
    if file.data.len() > limit {
        return Err(AppError::new(413, format!("The file is larger than the limit of {} MB.", limit >> 20)));
    }
    let metadata = match parts.iter().find(|p| p.name == "metadata") {
        Some(part) if !part.data.is_empty() => match serde_json::from_slice::<Value>(part.data) {
            Ok(Value::Object(m)) => Value::Object(m),
            Ok(Value::Null) => json!({}),
            _ => return Err(AppError::bad_request("[ERROR: Invalid metadata format]")),
        },
        _ => json!({}),
    };
    let name = clean_name(file.filename.as_deref().unwrap_or("file"));
    let kind = file
        .content_type
        .clone()
        .filter(|t| t.len() <= 255 && !t.chars().any(char::is_control))
        .unwrap_or_else(|| "application/octet-stream".to_string());
    let id = store(&*ctx.db, &user.id, &name, &kind, file.data, metadata)?;
    ok(file_json(&own(ctx, user, &id)?))
}

/// Stores a file of `user_id`'s; returns its id.
pub fn store(
    db: &dyn Db,
    user_id: &str,
    name: &str,
    kind: &str,
    data: &[u8],
    client_meta: Value,
) -> Result<String, AppError> {
    let hash: String = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
    let size = data.len() as i64;
    let meta = json!({"name": name, "content_type": kind, "size": size, "data": client_meta});
    let id = uuid();
    db.execute(
        "INSERT INTO files (id, user_id, filename, hash, content_type, size, data, meta, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        vec![
            id.clone().into(),
            user_id.into(),
            name.into(),
            hash.into(),
            kind.into(),
            size.into(),
            Val::Blob(data.to_vec()),
            meta.to_string().into(),
            now().into(),
        ],
    )?;
    Ok(id)
}

fn list(ctx: &Ctx<'_>, user: &User) -> Result<Response, AppError> {
    let page = ctx.page()?.unwrap_or(1);
    let total = ctx.db.count("SELECT COUNT(*) FROM files WHERE user_id = $1", vec![user.id.clone().into()])?;
    let rows = ctx.db.query(
        &format!(
            "SELECT {META_COLUMNS} FROM files WHERE user_id = $1 ORDER BY updated_at DESC, id DESC LIMIT $2 OFFSET $3"
        ),
        vec![user.id.clone().into(), (PAGE_SIZE as i64).into(), (((page - 1) * PAGE_SIZE) as i64).into()],
    )?;
    ok(json!({"items": rows.iter().map(file_json).collect::<Vec<_>>(), "total": total}))
}

/// `name` for `filename*=UTF-8''…` (RFC 5987): everything but unreserved
/// characters percent-encoded, so no quote, semicolon or line break can end
/// the header value.
fn rfc5987(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn content(ctx: &Ctx<'_>, user: &User, id: &str) -> Result<Response, AppError> {
    let mut row = ctx
        .db
        .row(
            "SELECT filename, content_type, data FROM files WHERE id = $1 AND user_id = $2",
            vec![id.into(), user.id.clone().into()],
        )?
        .ok_or_else(AppError::not_found)?;
    let kind = row.text("content_type");
    let inline = ctx.req.query_param("attachment").as_deref() != Some("true")
        && matches!(
            kind.as_str(),
            "application/pdf" | "text/plain" | "image/png" | "image/jpeg" | "image/gif" | "image/webp"
        );
    let disposition = format!(
        "{}; filename*=UTF-8''{}",
        if inline { "inline" } else { "attachment" },
        rfc5987(&row.text("filename"))
    );
    Ok(Response::text(200, &kind, row.take_blob("data"))
        .with_header("content-disposition", &disposition)
        .with_header("x-content-type-options", "nosniff")
        .with_header("content-security-policy", "sandbox"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_become_paths_or_headers() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\Users\\x\\report.pdf"), "report.pdf");
        assert_eq!(clean_name("a\0b\r\nc.txt"), "abc.txt");
        assert_eq!(clean_name(".."), "file");
        assert_eq!(clean_name("dir/"), "file");
        assert_eq!(clean_name(&"é".repeat(300)).len(), 254);
        assert_eq!(rfc5987("a \"b\";\r\n.txt"), "a%20%22b%22%3B%0D%0A.txt");
    }
}

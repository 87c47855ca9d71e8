//! Accounts: sign-up, sign-in, sessions, passwords and users' API keys
//! (`/api/v1/auths/*`), and the check every app route starts with.
//!
//! - A session is an HS256 JWT `{id, exp, iat, jti, session_stamp}` signed
//!   with the host's `jwt_secret`, sent as `Authorization: Bearer` or the
//!   `token` cookie (HttpOnly, SameSite=Lax). Signing out revokes the
//!   token (its `jti` is kept until it would have expired); a password
//!   change gives the account a new stamp, which ends its other sessions.
//! - A user's own key (`sk-` and 32 hex digits) stands for the user on the
//!   app routes; only its SHA-256 is stored.
//! - Passwords are hashed with Argon2id (19 MiB, 2 passes, OWASP's
//!   minimum); bcrypt `$2b$` hashes from an Open WebUI database verify too.
//! - Failed sign-ins are counted per account and per address in 5-minute
//!   windows (the host's key-value store); with 10 (per account) or 50 (per
//!   address) in this window and the last, sign-in answers 429 before any
//!   password is checked.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use super::db::{Db, Row, Val};
use super::{messages, method_not_allowed, now, ok, random_hex, uuid, AppError, Ctx};
use crate::http::Response;
use crate::json::Fields;

/// Roles, from most to least allowed.
pub const ROLES: [&str; 3] = ["admin", "user", "pending"];
/// Longest password taken (bcrypt reads 72 bytes; Argon2 any, but hashing
/// megabytes is work an attacker could ask for).
const MAX_PASSWORD_BYTES: usize = 256;
/// Failed sign-ins per account, and per address, in one window.
const ACCOUNT_FAILURES: u64 = 10;
const ADDRESS_FAILURES: u64 = 50;
const FAILURE_WINDOW_SECONDS: i64 = 300;
const SIGNIN_BUCKET: &str = "tern-signin";

/// The signed-in caller.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub role: String,
    pub row: Row,
    /// Authenticated with a sign-in token (not a key).
    pub session: bool,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }
}

/// The user behind the request's credentials, any role.
pub fn current(ctx: &Ctx<'_>) -> Result<User, AppError> {
    let token = credentials(ctx).ok_or_else(|| AppError::unauthorized(messages::NOT_AUTHENTICATED))?;
    user_of_token(ctx, &token)
}

/// The user a sign-in token or `sk-` key names, any role.
pub fn user_of_token(ctx: &Ctx<'_>, token: &str) -> Result<User, AppError> {
    let token = token.to_string();
    if token.starts_with("sk-") {
        let row = ctx
            .db
            .row(&format!("SELECT {USER_COLUMNS} FROM users WHERE api_key = $1"), vec![key_digest(&token).into()])?
            .ok_or_else(|| AppError::unauthorized(messages::INVALID_TOKEN))?;
        return Ok(user_of(row, false));
    }
    let claims =
        verify_token(&secret(ctx)?, &token, now()).ok_or_else(|| AppError::unauthorized(messages::INVALID_TOKEN))?;
    let id = claims.get("id").and_then(Value::as_str).unwrap_or_default();
    let row = ctx
        .db
        .row(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"), vec![id.into()])?
        .ok_or_else(|| AppError::unauthorized(messages::INVALID_TOKEN))?;
    if claims.get("session_stamp").and_then(Value::as_str) != Some(row.text("session_stamp").as_str()) {
        return Err(AppError::unauthorized(messages::INVALID_TOKEN));
    }
    let jti = claims.get("jti").and_then(Value::as_str).unwrap_or_default();
    if ctx.db.row("SELECT jti FROM revoked_tokens WHERE jti = $1", vec![jti.into()])?.is_some() {
        return Err(AppError::unauthorized(messages::INVALID_TOKEN));
    }
    Ok(user_of(row, true))
}

/// A signed-in user whose account is approved (`user` or `admin`).
pub fn verified(ctx: &Ctx<'_>) -> Result<User, AppError> {
    let user = current(ctx)?;
    match user.role.as_str() {
        "user" | "admin" => Ok(user),
        _ => Err(AppError::forbidden()),
    }
}

/// A signed-in admin.
pub fn admin(ctx: &Ctx<'_>) -> Result<User, AppError> {
    let user = current(ctx)?;
    if user.is_admin() {
        Ok(user)
    } else {
        Err(AppError::forbidden())
    }
}

/// The columns every user query reads.
pub const USER_COLUMNS: &str = "id, email, name, role, profile_image_url, password, api_key, session_stamp, \
     settings, info, last_active_at, created_at, updated_at";

fn user_of(row: Row, session: bool) -> User {
    User { id: row.text("id"), email: row.text("email"), role: row.text("role"), row, session }
}

/// The bearer token, else the `token` cookie.
fn credentials(ctx: &Ctx<'_>) -> Option<String> {
    if let Some(auth) = ctx.req.header("authorization") {
        let (scheme, token) = auth.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    cookie(ctx.req.header("cookie")?, "token")
}

fn cookie(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

fn secret(ctx: &Ctx<'_>) -> Result<String, AppError> {
    ctx.platform.setting("jwt_secret").ok_or_else(|| AppError::new(503, "The server has no signing secret."))
}

fn session_seconds(ctx: &Ctx<'_>) -> i64 {
    ctx.platform.setting("session_seconds").and_then(|s| s.parse().ok()).unwrap_or(7 * 24 * 3600)
}

type HmacSha256 = Hmac<Sha256>;

fn sign(secret: &str, input: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// An HS256 JWT of `claims`.
pub fn issue_token(secret: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(sign(secret, &input));
    format!("{input}.{signature}")
}

/// The claims of a token signed with `secret` (HS256 only) whose `exp` is
/// after `now`.
pub fn verify_token(secret: &str, token: &str, now: i64) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let head: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if head.get("alg").and_then(Value::as_str) != Some("HS256") {
        return None;
    }
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(format!("{header}.{payload}").as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    // Every token this server signs expires; one without `exp` is not one.
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp > now => Some(claims),
        _ => None,
    }
}

/// An Argon2id hash of `password` in PHC form.
pub fn hash_password(password: &str) -> Result<String, AppError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|_| AppError::new(503, "No randomness for a password salt."))?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| AppError::new(500, "Salt encoding failed."))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AppError::new(500, "Password hashing failed."))
}

/// True when `password` matches `hash` (Argon2 PHC, or bcrypt `$2a$`/`$2b$`/`$2y$`).
pub fn verify_password(password: &str, hash: &str) -> bool {
    if hash.starts_with("$2") {
        let bytes = password.as_bytes();
        return bcrypt::verify(&bytes[..bytes.len().min(72)], hash).unwrap_or(false);
    }
    PasswordHash::new(hash)
        .is_ok_and(|parsed| argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// The SHA-256 of a user's key, as stored.
pub fn key_digest(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn check_password(password: &str) -> Result<(), AppError> {
    if password.is_empty() {
        return Err(AppError::bad_request("The password must not be empty."));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AppError::bad_request(format!("The password must be at most {MAX_PASSWORD_BYTES} bytes long.")));
    }
    Ok(())
}

/// An email as stored: trimmed, lower case; refused unless it looks like
/// `name@domain.tld` or `name@localhost`.
pub fn normalize_email(email: &str) -> Result<String, AppError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 320
        && !email.chars().any(char::is_control)
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && (domain == "localhost"
                        || domain.split_once('.').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()))
            }
            None => false,
        };
    if valid {
        Ok(email)
    } else {
        Err(AppError::bad_request(messages::INVALID_EMAIL))
    }
}

/// A display name: trimmed, 1 to 200 characters, no control characters.
pub fn check_name(name: &str) -> Result<String, AppError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(AppError::bad_request("The name must be 1 to 200 characters, without control characters."));
    }
    Ok(name.to_string())
}

/// Open WebUI's default permissions of a user (what the frontend reads).
pub fn permissions() -> Value {
    json!({
        "workspace": {"models": false, "knowledge": false, "prompts": false, "tools": false},
        "sharing": {"public_models": false, "public_knowledge": false, "public_prompts": false, "public_tools": false},
        "chat": {"controls": true, "file_upload": true, "delete": true, "edit": true, "share": true, "export": true,
                 "stt": true, "tts": true, "call": true, "multiple_models": true, "temporary": true,
                 "temporary_enforced": false},
        "features": {"api_keys": true, "folders": true, "web_search": false, "image_generation": true,
                     "code_interpreter": false, "notes": false, "channels": false},
        "settings": {"interface": true}
    })
}

/// The public form of a user (no hash, no key).
pub fn user_json(row: &Row) -> Value {
    let id = row.text("id");
    let image = row.opt_text("profile_image_url").filter(|u| !u.is_empty()).unwrap_or_else(|| "/user.png".into());
    json!({
        "id": id,
        "email": row.text("email"),
        "username": null,
        "role": row.text("role"),
        "name": row.text("name"),
        "profile_image_url": image,
        "bio": null,
        "gender": null,
        "date_of_birth": null,
        "info": row.json("info", Value::Null),
        "settings": row.json("settings", Value::Null),
        "oauth": null,
        "last_active_at": row.int("last_active_at"),
        "updated_at": row.int("updated_at"),
        "created_at": row.int("created_at"),
    })
}

/// The admin's settings stored in `app_config` under `admin`, with defaults.
pub fn admin_config(db: &dyn Db) -> Result<Map<String, Value>, AppError> {
    let mut config = match json!({
        "SHOW_ADMIN_DETAILS": true,
        "WEBUI_URL": "",
        "ENABLE_SIGNUP": true,
        "ENABLE_LOGIN_FORM": true,
        "ENABLE_API_KEYS": true,
        "ENABLE_API_KEYS_ENDPOINT_RESTRICTIONS": false,
        "API_KEYS_ALLOWED_ENDPOINTS": "",
        "DEFAULT_USER_ROLE": "pending",
        "JWT_EXPIRES_IN": "",
        "ENABLE_COMMUNITY_SHARING": false,
        "ENABLE_MESSAGE_RATING": true,
        "ENABLE_FOLDERS": true,
        "ENABLE_CHANNELS": false,
        "ENABLE_NOTES": false,
        "ENABLE_USER_WEBHOOKS": false,
        "PENDING_USER_OVERLAY_TITLE": "",
        "PENDING_USER_OVERLAY_CONTENT": "",
        "RESPONSE_WATERMARK": "",
    }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    if let Some(row) = db.row("SELECT value FROM app_config WHERE key = $1", vec!["admin".into()])? {
        if let Value::Object(stored) = row.json("value", Value::Null) {
            config.extend(stored);
        }
    }
    Ok(config)
}

fn config_flag(config: &Map<String, Value>, key: &str) -> bool {
    config.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// `/api/v1/auths/{rest}`.
pub fn route(ctx: &mut Ctx<'_>, method: &str, rest: &str) -> Result<Response, AppError> {
    match (method, rest) {
        ("GET", "") => session_user(ctx),
        ("POST", "signup") => signup(ctx),
        ("POST", "signin") => signin(ctx),
        ("POST", "signout") => signout(ctx),
        ("POST", "update/password") => update_password(ctx),
        ("POST", "update/profile") => update_profile(ctx),
        ("POST", "update/timezone") => update_timezone(ctx),
        ("POST", "add") => add_user(ctx),
        ("GET", "admin/details") => admin_details(ctx),
        ("GET", "admin/config") => {
            admin(ctx)?;
            ok(Value::Object(admin_config(&*ctx.db)?))
        }
        ("POST", "admin/config") => set_admin_config(ctx),
        ("POST", "api_key") => create_key(ctx),
        ("GET", "api_key") => show_key(ctx),
        ("DELETE", "api_key") => delete_key(ctx),
        (_, "" | "signup" | "signin" | "signout" | "update/password" | "update/profile" | "add") => {
            Err(method_not_allowed(if rest.is_empty() { "GET" } else { "POST" }))
        }
        (_, "api_key") => Err(method_not_allowed("GET, POST, DELETE")),
        _ => Err(AppError::not_found()),
    }
}

/// The signed-in answer: the user, a fresh token, and the cookie.
fn session_response(ctx: &Ctx<'_>, row: &Row, status: u16) -> Result<Response, AppError> {
    let ttl = session_seconds(ctx);
    let expires_at = now() + ttl;
    let claims = json!({
        "id": row.text("id"),
        "iat": now(),
        "exp": expires_at,
        "jti": uuid(),
        "session_stamp": row.text("session_stamp"),
    });
    let token = issue_token(&secret(ctx)?, &claims);
    let mut body = user_json(row);
    let object = body.as_object_mut().expect("an object");
    object.insert("token".into(), json!(token));
    object.insert("token_type".into(), json!("Bearer"));
    object.insert("expires_at".into(), json!(expires_at));
    object.insert("permissions".into(), permissions());
    let cookie = format!("token={token}; HttpOnly; Path=/; SameSite=Lax; Max-Age={ttl}");
    Ok(Response::json(status, &body).with_header("set-cookie", &cookie))
}

fn session_user(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let user = current(ctx)?;
    let mut body = user_json(&user.row);
    let object = body.as_object_mut().expect("an object");
    if user.session {
        object.insert("token".into(), json!(credentials(ctx)));
        object.insert("token_type".into(), json!("Bearer"));
    }
    object.insert("permissions".into(), permissions());
    ok(body)
}

fn signup(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let body = ctx.body()?;
    let (name, email, image, hash) = new_account(&Fields::new(&body))?;
    let config = admin_config(&*ctx.db)?;
    let created = ctx.db.transaction(|db| {
        let users = db.count("SELECT COUNT(*) FROM users", vec![])?;
        if users > 0 && !config_flag(&config, "ENABLE_SIGNUP") {
            return Err(AppError::forbidden());
        }
        // The first account administers the server.
        let role = if users == 0 { "admin".to_string() } else { default_role(&config) };
        let id = insert_user(db, &email, &name, &role, &image, &hash)?;
        db.row(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"), vec![id.into()])
    })?;
    let row = created.ok_or_else(|| AppError::new(500, "The account was not created."))?;
    session_response(ctx, &row, 200)
}

fn default_role(config: &Map<String, Value>) -> String {
    match config.get("DEFAULT_USER_ROLE").and_then(Value::as_str) {
        Some(role @ ("pending" | "user")) => role.to_string(),
        _ => "pending".to_string(),
    }
}

fn window_key(kind: &str, who: &str, window: i64) -> String {
    format!("{kind}:{window}:{}", key_digest(who))
}

/// The failures of `who` in this window and the one before (so a burst
/// that straddles a window's end is counted whole).
fn recent_failures(ctx: &Ctx<'_>, kind: &str, who: &str) -> u64 {
    let window = now() / FAILURE_WINDOW_SECONDS;
    let store = ctx.engine.store();
    // Adding nothing reads a counter.
    (window - 1..=window).map(|w| store.increment(SIGNIN_BUCKET, &window_key(kind, who, w), 0)).sum()
}

fn count_failure(ctx: &Ctx<'_>, kind: &str, who: &str) {
    let key = window_key(kind, who, now() / FAILURE_WINDOW_SECONDS);
    ctx.engine.store().increment(SIGNIN_BUCKET, &key, 1);
}

fn signin(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let body = ctx.body()?;
    let f = Fields::new(&body);
    let email = f.required_string("email")?.trim().to_lowercase();
    let password = f.required_string("password")?;
    let address = ctx.req.header("x-tern-peer").unwrap_or("unknown").to_string();
    if recent_failures(ctx, "account", &email) >= ACCOUNT_FAILURES
        || recent_failures(ctx, "address", &address) >= ADDRESS_FAILURES
    {
        return Err(AppError::new(429, messages::RATE_LIMITED));
    }
    let row = ctx.db.row(&format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"), vec![email.clone().into()])?;
    let matched = match &row {
        Some(row) if password.len() <= MAX_PASSWORD_BYTES => verify_password(password, &row.text("password")),
        // An unknown email costs one hash too, so a miss takes as long as a
        // wrong password.
        _ => {
            let _ = hash_password(&password[..password.floor_char_boundary(MAX_PASSWORD_BYTES)]);
            false
        }
    };
    let Some(row) = row.filter(|_| matched) else {
        count_failure(ctx, "account", &email);
        count_failure(ctx, "address", &address);
        return Err(AppError::bad_request(messages::INVALID_CRED));
    };
    ctx.db.execute("UPDATE users SET last_active_at = $1 WHERE id = $2", vec![now().into(), row.text("id").into()])?;
    session_response(ctx, &row, 200)
}

/// Ends the session: its token (if it is a valid one) is revoked until it
/// would have expired, and the cookie is cleared.
fn signout(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let token = credentials(ctx).filter(|t| !t.starts_with("sk-"));
    if let Some(claims) = token.and_then(|t| verify_token(&secret(ctx).ok()?, &t, now())) {
        let jti = claims.get("jti").and_then(Value::as_str).unwrap_or_default().to_string();
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or_default();
        ctx.db.transaction(|db| {
            db.execute(
                "DELETE FROM revoked_tokens WHERE expires_at < $1 OR jti = $2",
                vec![now().into(), jti.clone().into()],
            )?;
            db.execute("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2)", vec![jti.into(), exp.into()])
        })?;
    }
    Ok(Response::json(200, &json!({"status": true}))
        .with_header("set-cookie", "token=; HttpOnly; Path=/; SameSite=Lax; Max-Age=0"))
}

fn update_password(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let user = current(ctx)?;
    let body = ctx.body()?;
    let f = Fields::new(&body);
    let old = f.required_string("password")?;
    let new = f.required_string("new_password")?;
    check_password(new)?;
    if !verify_password(old, &user.row.text("password")) {
        return Err(AppError::bad_request(messages::INCORRECT_PASSWORD));
    }
    set_password(&*ctx.db, &user.id, new)?;
    ok(json!(true))
}

/// Stores a new password and a new session stamp: the account's sessions
/// end, its key and data stay.
pub fn set_password(db: &dyn Db, id: &str, password: &str) -> Result<(), AppError> {
    check_password(password)?;
    db.execute(
        "UPDATE users SET password = $1, session_stamp = $2, updated_at = $3 WHERE id = $4",
        vec![hash_password(password)?.into(), uuid().into(), now().into(), id.into()],
    )?;
    Ok(())
}

fn update_profile(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let user = verified(ctx)?;
    let body = ctx.body()?;
    let f = Fields::new(&body);
    let name = check_name(f.required_string("name")?)?;
    let image = f.string("profile_image_url")?.unwrap_or("/user.png");
    ctx.db.execute(
        "UPDATE users SET name = $1, profile_image_url = $2, updated_at = $3 WHERE id = $4",
        vec![name.clone().into(), image.into(), now().into(), user.id.clone().into()],
    )?;
    ok(json!({"id": user.id, "name": name, "role": user.role, "email": user.email, "profile_image_url": image}))
}

/// `POST /api/v1/auths/update/timezone {timezone}`: kept in the account's
/// info, as the frontend sends it at every sign-in.
fn update_timezone(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let user = current(ctx)?;
    let body = ctx.body()?;
    let zone = Fields::new(&body).required_string("timezone")?;
    let valid =
        !zone.is_empty() && zone.len() <= 64 && zone.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
    if !valid {
        return Err(AppError::bad_request("'timezone' must be an IANA time zone name such as Europe/Paris."));
    }
    let mut info = match user.row.json("info", Value::Null) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    info.insert("timezone".into(), json!(zone));
    ctx.db.execute(
        "UPDATE users SET info = $1 WHERE id = $2",
        vec![json_text(&Value::Object(info)), user.id.clone().into()],
    )?;
    ok(json!({"status": true}))
}

fn add_user(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    admin(ctx)?;
    let body = ctx.body()?;
    let f = Fields::new(&body);
    let (name, email, image, hash) = new_account(&f)?;
    let role = f.string("role")?.unwrap_or("pending");
    if !ROLES.contains(&role) {
        return Err(AppError::bad_request("'role' must be admin, user or pending."));
    }
    let id = ctx.db.transaction(|db| insert_user(db, &email, &name, role, &image, &hash))?;
    ok(json!({"id": id, "email": email, "name": name, "role": role, "profile_image_url": image}))
}

/// A new account's name, email, picture and password hash, checked.
fn new_account(f: &Fields<'_>) -> Result<(String, String, String, String), AppError> {
    let name = check_name(f.required_string("name")?)?;
    let email = normalize_email(f.required_string("email")?)?;
    let password = f.required_string("password")?;
    check_password(password)?;
    let image = f.string("profile_image_url")?.unwrap_or("/user.png").to_string();
    Ok((name, email, image, hash_password(password)?))
}

/// Stores an account unless its email is taken (run it in a transaction);
/// returns its id.
fn insert_user(db: &dyn Db, email: &str, name: &str, role: &str, image: &str, hash: &str) -> Result<String, AppError> {
    if db.row("SELECT id FROM users WHERE email = $1", vec![email.into()])?.is_some() {
        return Err(AppError::bad_request(messages::EMAIL_TAKEN));
    }
    let id = uuid();
    db.execute(
        "INSERT INTO users (id, email, name, role, profile_image_url, password, session_stamp, \
         last_active_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8)",
        vec![
            id.clone().into(),
            email.into(),
            name.into(),
            role.into(),
            image.into(),
            hash.into(),
            uuid().into(),
            now().into(),
        ],
    )?;
    Ok(id)
}

fn admin_details(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    current(ctx)?;
    let config = admin_config(&*ctx.db)?;
    if !config_flag(&config, "SHOW_ADMIN_DETAILS") {
        return Err(AppError::bad_request(messages::ACTION_PROHIBITED));
    }
    let first =
        ctx.db.row("SELECT name, email FROM users WHERE role = 'admin' ORDER BY created_at, id LIMIT 1", vec![])?;
    let first = first.ok_or_else(AppError::not_found)?;
    ok(json!({"name": first.text("name"), "email": first.text("email")}))
}

fn set_admin_config(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    admin(ctx)?;
    let body = ctx.body()?;
    let mut config = admin_config(&*ctx.db)?;
    for (key, value) in body {
        let valid = match key.as_str() {
            "DEFAULT_USER_ROLE" => matches!(value.as_str(), Some("pending" | "user")),
            k if k.starts_with("ENABLE_") || k == "SHOW_ADMIN_DETAILS" => value.is_boolean(),
            _ => value.is_string() || value.is_null() || value.is_number() || value.is_boolean() || value.is_object(),
        };
        if !valid {
            return Err(AppError::bad_request(format!("'{key}' has a value this setting cannot take.")));
        }
        config.insert(key, value);
    }
    let text = Value::Object(config.clone()).to_string();
    ctx.db.transaction(|db| {
        db.execute("DELETE FROM app_config WHERE key = $1", vec!["admin".into()])?;
        db.execute("INSERT INTO app_config (key, value) VALUES ($1, $2)", vec!["admin".into(), text.into()])
    })?;
    ok(Value::Object(config))
}

fn keys_allowed(ctx: &Ctx<'_>) -> Result<(), AppError> {
    if config_flag(&admin_config(&*ctx.db)?, "ENABLE_API_KEYS") {
        Ok(())
    } else {
        Err(AppError::new(403, "API key creation is not allowed in the environment."))
    }
}

fn create_key(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let user = verified(ctx)?;
    keys_allowed(ctx)?;
    let key = format!("sk-{}", random_hex(16));
    ctx.db.execute(
        "UPDATE users SET api_key = $1, updated_at = $2 WHERE id = $3",
        vec![key_digest(&key).into(), now().into(), user.id.into()],
    )?;
    ok(json!({"api_key": key}))
}

/// Only the key's digest is kept, so the key itself is shown once, when it
/// is made; this says whether one exists.
fn show_key(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let user = verified(ctx)?;
    keys_allowed(ctx)?;
    if user.row.opt_text("api_key").is_none() {
        return Err(AppError::new(404, "No API key exists for this account."));
    }
    ok(json!({"api_key": "sk-…", "stored": "digest only: the key was shown when it was created"}))
}

fn delete_key(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let user = verified(ctx)?;
    ctx.db.execute(
        "UPDATE users SET api_key = NULL, updated_at = $1 WHERE id = $2",
        vec![now().into(), user.id.into()],
    )?;
    ok(json!(true))
}

/// Whether any account exists (the frontend's onboarding).
pub fn any_user(db: &dyn Db) -> Result<bool, AppError> {
    Ok(db.row("SELECT id FROM users LIMIT 1", vec![])?.is_some())
}

/// Values for a user row's JSON column update.
pub fn json_text(value: &Value) -> Val {
    Val::Text(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_secret_and_before_expiry() {
        let token = issue_token("secret-one-secret", &json!({"id": "u1", "exp": 1000}));
        assert_eq!(verify_token("secret-one-secret", &token, 999).unwrap()["id"], "u1");
        assert!(verify_token("secret-one-secret", &token, 1000).is_none());
        assert!(verify_token("secret-two-secret", &token, 999).is_none());
        // A payload changed after signing.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"id":"admin","exp":1000}"#);
        parts[1] = &forged;
        assert!(verify_token("secret-one-secret", &parts.join("."), 999).is_none());
        // "alg": "none" is never accepted.
        let none =
            format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode(r#"{"id":"u1"}"#));
        assert!(verify_token("secret-one-secret", &none, 0).is_none());
        let forever = issue_token("secret-one-secret", &json!({"id": "u1"}));
        assert!(verify_token("secret-one-secret", &forever, 0).is_none());
    }

    #[test]
    fn passwords_argon2_and_bcrypt() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        let bcrypt =
            bcrypt::hash_with_salt("open webui", 4, [7u8; 16]).unwrap().format_for_version(bcrypt::Version::TwoB);
        assert!(verify_password("open webui", &bcrypt));
        assert!(!verify_password("open webu", &bcrypt));
    }

    #[test]
    fn emails_and_names() {
        assert_eq!(normalize_email(" Ada@Example.COM ").unwrap(), "ada@example.com");
        assert!(normalize_email("admin@localhost").is_ok());
        for bad in ["", "ada", "ada@", "@x.y", "a@b", "a@b@c.d", "a\0@b.c"] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("  ").is_err());
        assert!(check_name(&"x".repeat(201)).is_err());
        assert_eq!(check_name(" Robert'); DROP TABLE users;-- ").unwrap(), "Robert'); DROP TABLE users;--");
    }
}

//! What the frontend reads to start: `/api/config` (with `onboarding`
//! while no account exists), `/api/models` (the engine's models), and the
//! lists of features tern does not have (banners, folders, tools, prompts,
//! knowledge), answered empty.

use serde_json::{json, Value};

use super::auth::{self, admin_config, current, verified};
use super::{ok, AppError, Ctx};
use crate::http::Response;

pub fn route(ctx: &mut Ctx<'_>, method: &str, path: &str) -> Result<Response, AppError> {
    if method != "GET" {
        return Err(AppError::new(405, "Method not allowed; this path takes GET."));
    }
    match path {
        "/api/config" => config(ctx),
        // Release notes of the frontend's own project are not tern's to give.
        "/api/changelog" => ok(json!({})),
        "/api/v1/models/model/profile/image" => {
            auth::current(ctx)?;
            Ok(Response::empty(302).with_header("location", "/static/favicon.png"))
        }
        "/api/models" | "/api/v1/models" => models(ctx),
        "/api/usage" => usage(ctx),
        "/api/v1/configs/banners"
        | "/api/v1/groups/"
        | "/api/v1/folders/"
        | "/api/v1/folders/shared"
        | "/api/v1/functions/"
        | "/api/v1/skills/"
        | "/api/v1/tools/"
        | "/api/v1/tools/list"
        | "/api/v1/prompts/"
        | "/api/v1/prompts/tags"
        | "/api/v1/models/tags" => {
            verified(ctx)?;
            ok(json!([]))
        }
        "/api/v1/knowledge/" | "/api/v1/prompts/list" | "/api/v1/models/list" => {
            verified(ctx)?;
            ok(json!({"items": [], "total": 0}))
        }
        _ => Err(AppError::not_found()),
    }
}

fn config(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    let admin = admin_config(&*ctx.db)?;
    let flag = |key: &str| admin.get(key).and_then(Value::as_bool).unwrap_or(false);
    let mut body = json!({
        "status": true,
        "name": "tern",
        "version": crate::webui::reported_version(),
        "default_locale": "",
        "oauth": {"providers": {}},
        "features": {
            "auth": true,
            "auth_trusted_header": false,
            "enable_ldap": false,
            "enable_signup": flag("ENABLE_SIGNUP"),
            "enable_login_form": flag("ENABLE_LOGIN_FORM"),
            "enable_websocket": false,
        },
    });
    let user = current(ctx).ok();
    if user.is_none() && !auth::any_user(&*ctx.db)? {
        body["onboarding"] = json!(true);
    }
    if let Some(user) = user {
        let features = body["features"].as_object_mut().expect("an object");
        features.insert("enable_api_keys".into(), json!(flag("ENABLE_API_KEYS")));
        features.insert("enable_folders".into(), json!(false));
        features.insert("enable_channels".into(), json!(false));
        features.insert("enable_notes".into(), json!(false));
        features.insert("enable_web_search".into(), json!(false));
        features.insert("enable_image_generation".into(), json!(ctx.platform.setting("media_upstream").is_some()));
        features.insert("enable_community_sharing".into(), json!(false));
        features.insert("enable_message_rating".into(), json!(false));
        features.insert("enable_title_generation".into(), json!(true));
        features.insert("enable_tags_generation".into(), json!(true));
        if user.role != "pending" {
            body["default_models"] = Value::Null;
            body["permissions"] = auth::permissions();
            body["file"] = json!({"max_size": ctx.platform.setting("max_upload_bytes")
                .and_then(|b| b.parse::<u64>().ok()).map(|b| b >> 20), "max_count": null});
            body["audio"] =
                json!({"tts": {"engine": "", "voice": "alloy", "split_on": "punctuation"}, "stt": {"engine": ""}});
        }
    }
    ok(body)
}

fn models(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    verified(ctx)?;
    let data: Vec<Value> = ctx
        .engine
        .list_models()
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id,
                "name": m.id,
                "object": "model",
                "created": 0,
                "owned_by": "tern",
                "connection_type": "local",
                "info": {"meta": {"description": format!("{} ({}, {} weights, context {})",
                    m.architecture, m.quantization, m.parameter_count, m.context_length)}},
                "actions": [],
                "filters": [],
                "tags": [],
            })
        })
        .collect();
    ok(json!({ "data": data }))
}

/// `GET /api/usage` (admins): the models generating now, and the accounts
/// active in the last three minutes.
fn usage(ctx: &Ctx<'_>) -> Result<Response, AppError> {
    auth::admin(ctx)?;
    let busy = ctx.engine.status().running > 0;
    let models: Vec<String> =
        if busy { ctx.engine.list_models().into_iter().map(|m| m.id).collect() } else { Vec::new() };
    let since = super::now() - 180;
    let row = ctx.db.row("SELECT COUNT(*) AS n FROM users WHERE last_active_at >= $1", vec![since.into()])?;
    ok(json!({"model_ids": models, "user_count": row.map_or(0, |r| r.int("n"))}))
}

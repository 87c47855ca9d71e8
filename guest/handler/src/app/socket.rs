//! Socket.IO at `/ws/socket.io/`, as Open WebUI's frontend speaks it, over
//! Engine.IO v4's HTTP long-polling transport (wasi:http has no upgrade,
//! and the frontend polls when `/api/config` says websockets are off).
//!
//! The host keeps each session's queue between requests
//! ([`Sessions`], `tern:llm/sessions`); this module keeps the protocol:
//! 1. `GET` without `sid`: a new session, answered with Engine.IO's open
//!    packet (`0{"sid",…}`), offering no upgrade.
//! 2. `GET ?sid=`: waits up to 20 s for queued packets and answers up to
//!    15 of them joined by `\x1e`, with a ping (`2`) when one is due, or a
//!    no-op (`6`): never an empty body, which the client takes for an error.
//! 3. `POST ?sid=`: the client's packets: pongs, a close, and Socket.IO
//!    packets inside messages (`4…`): CONNECT with `{token}`, and the
//!    events `user-join` (binds the session to the account, so chat events
//!    reach it), `events:chat` (acknowledged `true`), `heartbeat`, `usage`.
//!
//! An unknown session is 400 (the client starts a new one). A token is
//! checked against the database only when a packet carries one, so a
//! waiting poll holds no database connection.

use serde_json::{json, Value};

use super::auth;
use super::{AppError, Ctx, Platform};
use crate::engine_client::EngineClient;
use crate::http::{Request, Response};

/// Where the frontend's socket lives (its client adds the final `/`).
pub fn is_path(path: &str) -> bool {
    matches!(path, "/ws/socket.io/" | "/ws/socket.io")
}
/// Longest a poll waits for packets, under proxies' usual 30 s.
const POLL_WAIT_MS: u32 = 20_000;
/// The interval the client is told; the host makes a ping due every 20 s.
const PING_INTERVAL_MS: u32 = 25_000;
const PING_TIMEOUT_MS: u32 = 20_000;
/// Packets one poll answers, the ping aside: python-engineio's clients
/// refuse a payload of more than 16 packets (the rest wait for the next).
const POLL_PACKETS: u32 = 15;
/// Largest payload the client may send in one `POST`.
const MAX_PAYLOAD: usize = 1 << 20;
/// Packets one `POST` may carry.
const MAX_PACKETS: usize = 64;
/// Engine.IO's packet separator.
const SEPARATOR: char = '\x1e';

/// The host's sessions (`tern:llm/sessions`).
pub trait Sessions {
    fn open(&self) -> Option<String>;
    fn bind(&self, id: &str, user: &str) -> bool;
    fn send(&self, id: &str, packets: &[String]) -> bool;
    fn send_to_user(&self, user: &str, packets: &[String]) -> u32;
    /// At most `max` queued packets and whether a ping is due; none for an
    /// unknown session.
    fn take(&self, id: &str, wait_ms: u32, max: u32) -> Option<(Vec<String>, bool)>;
    fn close(&self, id: &str);
}

/// Sends a Socket.IO event to every session of `user`.
pub fn emit_to_user(platform: &dyn Platform, user: &str, name: &str, data: &Value) -> u32 {
    platform.sessions().send_to_user(user, &[format!("42{}", json!([name, data]))])
}

/// Answers a request to the socket's path.
pub fn route(req: &Request, engine: &dyn EngineClient, platform: &dyn Platform) -> Result<Response, AppError> {
    if req.query_param("EIO").as_deref() != Some("4") {
        return Err(error("Unsupported protocol version"));
    }
    if req.query_param("transport").as_deref() != Some("polling") {
        return Err(error("Transport unknown: only polling is served"));
    }
    let sessions = platform.sessions();
    match (req.method.as_str(), req.query_param("sid")) {
        ("GET", None) => {
            let sid = sessions.open().ok_or_else(|| AppError::new(503, "Too many sessions; try again shortly."))?;
            let open = json!({"sid": sid, "upgrades": [], "pingInterval": PING_INTERVAL_MS,
                "pingTimeout": PING_TIMEOUT_MS, "maxPayload": MAX_PAYLOAD});
            Ok(text(format!("0{open}")))
        }
        ("GET", Some(sid)) => {
            let (mut packets, ping) = sessions.take(&sid, POLL_WAIT_MS, POLL_PACKETS).ok_or_else(unknown)?;
            if ping {
                packets.push("2".into());
            }
            if packets.is_empty() {
                packets.push("6".into());
            }
            Ok(text(packets.join(&SEPARATOR.to_string())))
        }
        ("POST", Some(sid)) => {
            let body = std::str::from_utf8(&req.body).map_err(|_| error("Bad request"))?;
            let packets: Vec<&str> = body.split(SEPARATOR).collect();
            if packets.len() > MAX_PACKETS {
                return Err(error("Too many packets in one payload"));
            }
            let mut replies = Vec::new();
            let mut closed = false;
            for packet in packets {
                match packet.split_at_checked(1) {
                    Some(("1", _)) => closed = true,
                    Some(("2", probe)) => replies.push(format!("3{probe}")),
                    Some(("3" | "6", _)) => {}
                    Some(("4", message)) => replies.extend(socket_packet(req, engine, platform, &sid, message)?),
                    _ => return Err(error("Bad request")),
                }
            }
            if closed {
                sessions.close(&sid);
            } else if !sessions.send(&sid, &replies) {
                return Err(unknown());
            }
            Ok(text("ok".into()))
        }
        ("POST", None) => Err(unknown()),
        _ => Err(super::method_not_allowed("GET, POST")),
    }
}

/// One Socket.IO packet from the client: the packets to answer it with.
fn socket_packet(
    req: &Request,
    engine: &dyn EngineClient,
    platform: &dyn Platform,
    sid: &str,
    packet: &str,
) -> Result<Vec<String>, AppError> {
    let (kind, rest) = packet.split_at_checked(1).ok_or_else(|| error("Bad request"))?;
    // Only the main namespace: `/admin,…` and the like are refused.
    if rest.starts_with('/') {
        let namespace = rest.split(',').next().unwrap_or(rest);
        return Ok(vec![format!("44{namespace},{}", json!({"message": "Invalid namespace"}))]);
    }
    match kind {
        // CONNECT, with `{token}` as its auth when signed in.
        "0" => {
            let auth: Value = if rest.is_empty() { json!({}) } else { parse(rest)? };
            if let Some(token) = auth.get("token").and_then(Value::as_str) {
                join(req, engine, platform, sid, token);
            }
            Ok(vec![format!("40{}", json!({"sid": super::random_hex(10)}))])
        }
        // DISCONNECT: the session stays until the client closes it.
        "1" => Ok(Vec::new()),
        // EVENT `[name, data…]`, with an acknowledgement id before it when wanted.
        "2" => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (ack, args) = rest.split_at(digits);
            let args: Vec<Value> = match parse(args)? {
                Value::Array(a) if a.first().is_some_and(Value::is_string) => a,
                _ => return Err(error("An event is a list that starts with its name")),
            };
            let answer = match args[0].as_str().expect("checked") {
                "user-join" => {
                    let token = args.get(1).and_then(|d| d["auth"]["token"].as_str());
                    json!([token.and_then(|t| join(req, engine, platform, sid, t))])
                }
                "events:chat" => json!([true]),
                _ => json!([]),
            };
            Ok(if ack.is_empty() { Vec::new() } else { vec![format!("43{ack}{answer}")] })
        }
        // Acknowledgements of the server's events: none are asked for.
        "3" => Ok(Vec::new()),
        _ => Err(error("Bad request")),
    }
}

/// Binds the session to the account `token` signs in; the user's
/// `{id, name}`, or none for a token that signs in nobody approved.
fn join(req: &Request, engine: &dyn EngineClient, platform: &dyn Platform, sid: &str, token: &str) -> Option<Value> {
    let db = platform.database().ok()?;
    let ctx = Ctx { req, engine, platform, db };
    let user = auth::user_of_token(&ctx, token).ok()?;
    if user.role == "pending" {
        return None;
    }
    platform.sessions().bind(sid, &user.id);
    Some(json!({"id": user.id, "name": user.row.text("name")}))
}

fn parse(text: &str) -> Result<Value, AppError> {
    serde_json::from_str(text).map_err(|_| error("Bad request"))
}

fn text(body: String) -> Response {
    Response::text(200, "text/plain; charset=UTF-8", body.into_bytes())
}

/// A refused Engine.IO request: 400 (the client reads only the status).
fn error(message: &str) -> AppError {
    AppError::bad_request(message)
}

fn unknown() -> AppError {
    error("Session ID unknown")
}

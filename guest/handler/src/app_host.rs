//! The app layer's [`Platform`] over the host's imports: `spin:sqlite` or
//! `spin:postgres` (whichever `wasi:config` names as `database`),
//! `wasi:config/store`, `wasi:http/outgoing-handler` for the media
//! upstream, and `tern:llm/sessions` for Socket.IO. Only a wasm build links it.

use std::rc::Rc;

use crate::app::media::{Incoming, Outgoing};
use crate::app::socket::Sessions;
use crate::app::{db, AppError, Db, Dialect, Platform, Row, Val};
use crate::bindings::spin::postgres::postgres as pg;
use crate::bindings::spin::sqlite::sqlite;
use crate::bindings::tern::llm::sessions;
use crate::bindings::wasi::config::store as config;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use crate::bindings::wasi::io::streams::StreamError;

/// A setting from `wasi:config/store`; none when absent or unreadable.
pub fn setting(key: &str) -> Option<String> {
    config::get(key).ok().flatten()
}

pub struct HostPlatform;

impl Platform for HostPlatform {
    fn setting(&self, key: &str) -> Option<String> {
        setting(key)
    }

    fn database(&self) -> Result<Box<dyn Db>, AppError> {
        match setting("database").as_deref() {
            Some("sqlite") => {
                let conn = sqlite::Connection::open("default").map_err(|e| AppError::database(format!("{e:?}")))?;
                Ok(Box::new(SqliteDb(conn)))
            }
            Some("postgres") => {
                let url = setting("database_url").ok_or_else(|| AppError::database("no database_url"))?;
                let conn = pg::Connection::open(&url).map_err(|e| AppError::database(format!("{e:?}")))?;
                Ok(Box::new(PostgresDb(conn)))
            }
            _ => Err(AppError::new(503, "This server has no app database.")),
        }
    }

    fn forward(&self, request: Outgoing) -> Result<Incoming, String> {
        send(request)
    }

    fn sessions(&self) -> &dyn Sessions {
        self
    }

    fn share(&self) -> Box<dyn Platform> {
        Box::new(HostPlatform)
    }
}

impl Sessions for HostPlatform {
    fn open(&self) -> Option<String> {
        sessions::open()
    }

    fn bind(&self, id: &str, user: &str) -> bool {
        sessions::bind(id, user)
    }

    fn send(&self, id: &str, packets: &[String]) -> bool {
        sessions::send(id, packets)
    }

    fn send_to_user(&self, user: &str, packets: &[String]) -> u32 {
        sessions::send_to_user(user, packets)
    }

    fn take(&self, id: &str, wait_ms: u32, max: u32) -> Option<(Vec<String>, bool)> {
        sessions::take(id, wait_ms, max).map(|t| (t.packets, t.ping_due))
    }

    fn close(&self, id: &str) {
        sessions::close(id)
    }
}

struct SqliteDb(sqlite::Connection);

fn sqlite_values(params: Vec<Val>) -> Vec<sqlite::Value> {
    params
        .into_iter()
        .map(|v| match v {
            Val::Int(i) => sqlite::Value::Integer(i),
            Val::Text(t) => sqlite::Value::Text(t),
            Val::Blob(b) => sqlite::Value::Blob(b),
            Val::Null => sqlite::Value::Null,
        })
        .collect()
}

impl Db for SqliteDb {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn query(&self, sql: &str, params: Vec<Val>) -> Result<Vec<Row>, AppError> {
        let result = self
            .0
            .execute(&db::sqlite_placeholders(sql), &sqlite_values(params))
            .map_err(|e| AppError::database(format!("{e:?}")))?;
        let columns = Rc::new(result.columns);
        Ok(result
            .rows
            .into_iter()
            .map(|r| Row {
                columns: columns.clone(),
                values: r
                    .values
                    .into_iter()
                    .map(|v| match v {
                        sqlite::Value::Integer(i) => Val::Int(i),
                        sqlite::Value::Real(f) => Val::Text(f.to_string()),
                        sqlite::Value::Text(t) => Val::Text(t),
                        sqlite::Value::Blob(b) => Val::Blob(b),
                        sqlite::Value::Null => Val::Null,
                    })
                    .collect(),
            })
            .collect())
    }

    fn execute(&self, sql: &str, params: Vec<Val>) -> Result<u64, AppError> {
        self.query(sql, params)?;
        Ok(self.0.changes())
    }
}

struct PostgresDb(pg::Connection);

fn pg_values(params: Vec<Val>) -> Vec<pg::ParameterValue> {
    params
        .into_iter()
        .map(|v| match v {
            Val::Int(i) => pg::ParameterValue::Int64(i),
            Val::Text(t) => pg::ParameterValue::Str(t),
            Val::Blob(b) => pg::ParameterValue::Binary(b),
            Val::Null => pg::ParameterValue::DbNull,
        })
        .collect()
}

fn pg_error(e: pg::Error) -> AppError {
    AppError::database(format!("{e:?}"))
}

impl Db for PostgresDb {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn query(&self, sql: &str, params: Vec<Val>) -> Result<Vec<Row>, AppError> {
        let set = self.0.query(sql, &pg_values(params)).map_err(pg_error)?;
        let columns = Rc::new(set.columns.into_iter().map(|c| c.name).collect::<Vec<_>>());
        Ok(set
            .rows
            .into_iter()
            .map(|r| Row {
                columns: columns.clone(),
                values: r
                    .into_iter()
                    .map(|v| match v {
                        pg::DbValue::Boolean(b) => Val::Int(b.into()),
                        pg::DbValue::Int8(i) => Val::Int(i.into()),
                        pg::DbValue::Int16(i) => Val::Int(i.into()),
                        pg::DbValue::Int32(i) => Val::Int(i.into()),
                        pg::DbValue::Int64(i) => Val::Int(i),
                        pg::DbValue::Floating32(f) => Val::Text(f.to_string()),
                        pg::DbValue::Floating64(f) => Val::Text(f.to_string()),
                        pg::DbValue::Str(s) | pg::DbValue::Uuid(s) | pg::DbValue::Decimal(s) => Val::Text(s),
                        pg::DbValue::Binary(b) | pg::DbValue::Jsonb(b) => Val::Blob(b),
                        pg::DbValue::DbNull => Val::Null,
                        other => Val::Text(format!("{other:?}")),
                    })
                    .collect(),
            })
            .collect())
    }

    fn execute(&self, sql: &str, params: Vec<Val>) -> Result<u64, AppError> {
        self.0.execute(sql, &pg_values(params)).map_err(pg_error)
    }
}

/// Most bytes one `blocking-write-and-flush` may carry (wasi:io's limit).
const WRITE_CHUNK_BYTES: usize = 4096;

/// Sends `request` and reads the whole answer.
fn send(request: Outgoing) -> Result<Incoming, String> {
    let (scheme, rest) = request.url.split_once("://").ok_or("the upstream URL has no scheme")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let headers = Fields::new();
    // A declared length rather than chunks: some upstreams read no other.
    let length = request.body.len().to_string();
    headers.append("content-length", length.as_bytes()).map_err(|e| format!("content-length: {e:?}"))?;
    for (name, value) in &request.headers {
        headers.append(name, value.as_bytes()).map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method {
        "GET" => Method::Get,
        _ => Method::Post,
    };
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    outgoing.set_method(&method).map_err(|()| "method")?;
    outgoing.set_scheme(Some(&scheme)).map_err(|()| "scheme")?;
    outgoing.set_authority(Some(authority)).map_err(|()| "authority")?;
    outgoing.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let body = outgoing.body().map_err(|()| "request body")?;
    // The request goes out first, so its body streams to the upstream as
    // it is written.
    let pending = outgoing_handler::handle(outgoing, None).map_err(|e| format!("{e:?}"))?;
    {
        let stream = body.write().map_err(|()| "request body stream")?;
        for chunk in request.body.chunks(WRITE_CHUNK_BYTES) {
            stream.blocking_write_and_flush(chunk).map_err(|e| format!("sending the body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        _ => return Err("no answer".into()),
    };
    let status = response.status();
    let content_type =
        response.headers().get("content-type").into_iter().next().map(|v| String::from_utf8_lossy(&v).into_owned());
    let incoming = response.consume().map_err(|()| "response body")?;
    let mut out = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| "response body stream")?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
            }
        }
    }
    Ok(Incoming { status, content_type, body: out })
}

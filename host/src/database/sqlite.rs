//! `spin:sqlite@3.0.0` over one SQLite file (rusqlite, bundled SQLite).
//!
//! The file is in WAL mode with full sync, so every statement that returned
//! survives a crash of the process or the machine; writers wait for each
//! other up to the busy timeout. Statements run on tokio's blocking threads,
//! never on the threads that serve connections. Idle connections are kept
//! for reuse, each with its prepared statements.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{Value as SqlValue, ValueRef};
use wasmtime::component::Resource;

use crate::bindings::spin_sqlite::{self as wit, Error, QueryResult, RowResult, Value};
use crate::state::HostState;

/// How long a statement waits for another connection's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept.
const MAX_IDLE: usize = 16;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 128;

/// The database file and its idle connections.
pub struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl Pool {
    pub fn new(path: PathBuf) -> Self {
        Pool { path, idle: Mutex::new(Vec::new()) }
    }

    fn open(&self) -> rusqlite::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(&self.path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// An idle connection, or a new one.
    fn take(&self) -> rusqlite::Result<rusqlite::Connection> {
        match self.idle.lock().unwrap().pop() {
            Some(conn) => Ok(conn),
            None => self.open(),
        }
    }

    /// Takes `conn` back, rolling back a transaction it left open.
    fn give_back(&self, conn: rusqlite::Connection) {
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Brings the schema up to date; returns its version.
    pub async fn migrate(self: &Arc<Self>) -> anyhow::Result<i64> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.open()?;
            let version = migrate(&mut conn)?;
            pool.give_back(conn);
            Ok(version)
        })
        .await?
    }
}

fn migrate(conn: &mut rusqlite::Connection) -> anyhow::Result<i64> {
    use super::migrations::{check_not_newer, ALL, VERSION_TABLE};
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(VERSION_TABLE)?;
    let found: Option<i64> = tx.query_row("SELECT MAX(version) FROM tern_schema", [], |r| r.get(0))?;
    let mut version = found.unwrap_or(0);
    check_not_newer(version)?;
    let found = version;
    for step in ALL.iter().filter(|m| m.version > found) {
        for piece in step.sqlite {
            tx.execute_batch(piece)?;
        }
        version = step.version;
    }
    tx.execute("DELETE FROM tern_schema", [])?;
    tx.execute("INSERT INTO tern_schema (version) VALUES (?1)", [version])?;
    tx.commit()?;
    Ok(version)
}

/// A `spin:sqlite` connection as the guest holds it: one connection of the
/// pool, given back when the resource (or the request's store) is dropped.
pub struct Connection {
    conn: Option<rusqlite::Connection>,
    pool: Arc<Pool>,
    last_insert_rowid: i64,
    changes: u64,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::Io(e.to_string())
}

/// Runs one statement; `Err` carries the message for the guest.
fn execute(conn: &rusqlite::Connection, statement: &str, parameters: Vec<Value>) -> rusqlite::Result<QueryResult> {
    let mut stmt = conn.prepare_cached(statement)?;
    let params: Vec<SqlValue> = parameters
        .into_iter()
        .map(|v| match v {
            Value::Integer(i) => SqlValue::Integer(i),
            Value::Real(f) => SqlValue::Real(f),
            Value::Text(t) => SqlValue::Text(t),
            Value::Blob(b) => SqlValue::Blob(b),
            Value::Null => SqlValue::Null,
        })
        .collect();
    let columns: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
    let width = columns.len();
    let mut rows = Vec::new();
    let mut cursor = stmt.query(rusqlite::params_from_iter(params))?;
    while let Some(row) = cursor.next()? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(i) => Value::Integer(i),
                ValueRef::Real(f) => Value::Real(f),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            });
        }
        rows.push(RowResult { values });
    }
    Ok(QueryResult { columns, rows })
}

impl wit::Host for HostState {}

impl wit::HostConnection for HostState {
    async fn open(&mut self, database: String) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        let Some(pool) = self.app.database.as_ref().and_then(|d| d.sqlite()).cloned() else {
            return Ok(Err(Error::NoSuchDatabase));
        };
        if database != "default" {
            return Ok(Err(Error::NoSuchDatabase));
        }
        let taken = {
            let pool = pool.clone();
            tokio::task::spawn_blocking(move || pool.take()).await?
        };
        let conn = match taken {
            Ok(conn) => conn,
            Err(e) => return Ok(Err(io(e))),
        };
        let handle = Connection { conn: Some(conn), pool, last_insert_rowid: 0, changes: 0 };
        Ok(Ok(self.table.push(handle)?))
    }

    async fn execute(
        &mut self,
        this: Resource<Connection>,
        statement: String,
        parameters: Vec<Value>,
    ) -> wasmtime::Result<Result<QueryResult, Error>> {
        let handle = self.table.get_mut(&this)?;
        let Some(conn) = handle.conn.take() else { return Ok(Err(Error::InvalidConnection)) };
        let (conn, result, rowid, changes) = tokio::task::spawn_blocking(move || {
            let result = execute(&conn, &statement, parameters);
            let (rowid, changes) = (conn.last_insert_rowid(), conn.changes());
            (conn, result, rowid, changes)
        })
        .await?;
        let handle = self.table.get_mut(&this)?;
        handle.conn = Some(conn);
        handle.last_insert_rowid = rowid;
        handle.changes = changes;
        Ok(result.map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => Error::DatabaseFull,
            _ => io(e),
        }))
    }

    async fn last_insert_rowid(&mut self, this: Resource<Connection>) -> wasmtime::Result<i64> {
        Ok(self.table.get(&this)?.last_insert_rowid)
    }

    async fn changes(&mut self, this: Resource<Connection>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.changes)
    }

    async fn drop(&mut self, this: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> (tempfile::TempDir, Arc<Pool>) {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(Pool::new(dir.path().join("tern.db")));
        (dir, pool)
    }

    #[tokio::test]
    async fn migrates_once_and_refuses_a_newer_schema() {
        let (_dir, pool) = pool();
        assert_eq!(pool.migrate().await.unwrap(), super::super::migrations::LATEST_VERSION);
        assert_eq!(pool.migrate().await.unwrap(), super::super::migrations::LATEST_VERSION);
        let conn = pool.take().unwrap();
        conn.execute("UPDATE tern_schema SET version = version + 1", []).unwrap();
        pool.give_back(conn);
        let err = pool.migrate().await.unwrap_err();
        assert!(format!("{err:#}").contains("newer than this tern"), "{err:#}");
    }

    #[tokio::test]
    async fn statements_bind_values_and_return_rows() {
        let (_dir, pool) = pool();
        pool.migrate().await.unwrap();
        let conn = pool.take().unwrap();
        let text = "x'); DROP TABLE users; --".to_string();
        let insert = "INSERT INTO app_config (key, value) VALUES (?1, ?2)";
        let done = execute(&conn, insert, vec![Value::Text("k".into()), Value::Text(text.clone())]).unwrap();
        assert!(done.columns.is_empty());
        let got = execute(&conn, "SELECT value, 7 AS n FROM app_config WHERE key = ?1", vec![Value::Text("k".into())])
            .unwrap();
        assert_eq!(got.columns, ["value", "n"]);
        assert!(matches!(&got.rows[0].values[..], [Value::Text(t), Value::Integer(7)] if *t == text));
        // Only one statement per call: a second one is an error, never run.
        assert!(execute(&conn, "SELECT 1; DELETE FROM app_config", vec![]).is_err());
    }

    #[tokio::test]
    async fn a_connection_given_back_in_a_transaction_is_rolled_back() {
        let (_dir, pool) = pool();
        pool.migrate().await.unwrap();
        let conn = pool.take().unwrap();
        conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO app_config VALUES ('a', 'b');").unwrap();
        pool.give_back(conn);
        let conn = pool.take().unwrap();
        assert!(conn.is_autocommit());
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM app_config", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
    }
}

//! The host side of `spin:sqlite@3.0.0` over the SQLite database
//! (`database::sqlite`): values translated both ways, one statement per
//! call (a second one in the same text is an error, never run).

use rusqlite::types::{Value as SqlValue, ValueRef};
use wasmtime::component::Resource;

use crate::bindings::spin_sqlite::{self as wit, Error, QueryResult, RowResult, Value};
use crate::database::sqlite::Connection;
use crate::state::HostState;

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
        let Some(pool) = self.app.database().and_then(|d| d.sqlite()).cloned() else {
            return Ok(Err(Error::NoSuchDatabase));
        };
        if database != "default" {
            return Ok(Err(Error::NoSuchDatabase));
        }
        match Connection::open(pool).await {
            Ok(handle) => Ok(Ok(self.table.push(handle)?)),
            Err(e) => Ok(Err(io(e))),
        }
    }

    async fn execute(
        &mut self,
        this: Resource<Connection>,
        statement: String,
        parameters: Vec<Value>,
    ) -> wasmtime::Result<Result<QueryResult, Error>> {
        let handle = self.table.get_mut(&this)?;
        let ran = handle.run(move |conn| execute(conn, &statement, parameters)).await?;
        let Some(result) = ran else { return Ok(Err(Error::InvalidConnection)) };
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
    use crate::database::sqlite::Pool;
    use std::sync::Arc;

    #[tokio::test]
    async fn statements_bind_values_and_return_rows() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(Pool::new(dir.path().join("tern.db")));
        pool.migrate().await.unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("tern.db")).unwrap();
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
}

//! The SQLite database (rusqlite, bundled SQLite): one file, its idle
//! connections, its migrations, and the connection a request holds
//! (`spin:sqlite`'s resource, implemented in `spin_sqlite.rs`).
//!
//! The file is in WAL mode with full sync, so every statement that returned
//! survives a crash of the process or the machine; writers wait for each
//! other up to the busy timeout. Statements run on tokio's blocking threads,
//! never on the threads that serve connections. Idle connections are kept
//! for reuse, each with its prepared statements.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// What SQLite said after the last statement.
    pub last_insert_rowid: i64,
    pub changes: u64,
}

impl Connection {
    /// A connection of `pool` (an idle one, or a new one).
    pub async fn open(pool: Arc<Pool>) -> anyhow::Result<Self> {
        let taken = {
            let pool = pool.clone();
            tokio::task::spawn_blocking(move || pool.take()).await??
        };
        Ok(Connection { conn: Some(taken), pool, last_insert_rowid: 0, changes: 0 })
    }

    /// Runs `work` on a blocking thread with this connection; none if the
    /// connection is in use or gone.
    pub async fn run<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&rusqlite::Connection) -> T + Send + 'static,
    ) -> Result<Option<T>, tokio::task::JoinError> {
        let Some(conn) = self.conn.take() else { return Ok(None) };
        let (conn, value, rowid, changes) = tokio::task::spawn_blocking(move || {
            let value = work(&conn);
            let (rowid, changes) = (conn.last_insert_rowid(), conn.changes());
            (conn, value, rowid, changes)
        })
        .await?;
        self.conn = Some(conn);
        self.last_insert_rowid = rowid;
        self.changes = changes;
        Ok(Some(value))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
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

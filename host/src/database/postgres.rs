//! The PostgreSQL database (tokio-postgres): a bounded pool, its
//! migrations, and the connection a request holds (`spin:postgres`'s
//! resource, implemented in `spin_postgres.rs`), with each statement
//! prepared once per connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Statement};

/// How long opening a connection may wait for a free one.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

/// A client with its prepared statements.
struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// The configured server and its idle connections; at most `size` are
/// checked out at once, the rest wait.
pub struct Pool {
    /// The URL components must name to open it.
    pub url: String,
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    pub fn new(url: &str, size: usize) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| anyhow::anyhow!("--database-url is not a PostgreSQL URL: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        Ok(Pool {
            url: url.to_string(),
            config,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
        })
    }

    async fn connect(&self) -> Result<Session, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "a PostgreSQL connection ended");
            }
        });
        Ok(Session { client, statements: HashMap::new() })
    }

    /// An idle open session, or a new one.
    async fn take(&self) -> Result<Session, tokio_postgres::Error> {
        loop {
            let idle = self.idle.lock().unwrap().pop();
            match idle {
                Some(session) if !session.client.is_closed() => return Ok(session),
                Some(_) => continue,
                None => return self.connect().await,
            }
        }
    }

    fn give_back(&self, session: Session) {
        if !session.client.is_closed() {
            self.idle.lock().unwrap().push(session);
        }
    }

    /// Brings the schema up to date under an advisory lock (replicas that
    /// start together migrate one at a time); returns its version.
    pub async fn migrate(&self) -> anyhow::Result<i64> {
        use super::migrations::{check_not_newer, ALL, VERSION_TABLE};
        const LOCK: i64 = 0x7465_726e; // "tern"
        let mut session = self.take().await?;
        let client = &mut session.client;
        client.execute("SELECT pg_advisory_lock($1)", &[&LOCK]).await?;
        let result = async {
            let tx = client.transaction().await?;
            tx.batch_execute(VERSION_TABLE).await?;
            let found: Option<i64> = tx.query_one("SELECT MAX(version) FROM tern_schema", &[]).await?.get(0);
            let mut version = found.unwrap_or(0);
            check_not_newer(version)?;
            let found = version;
            for step in ALL.iter().filter(|m| m.version > found) {
                for piece in step.postgres {
                    tx.batch_execute(piece).await?;
                }
                version = step.version;
            }
            tx.execute("DELETE FROM tern_schema", &[]).await?;
            tx.execute("INSERT INTO tern_schema (version) VALUES ($1)", &[&version]).await?;
            tx.commit().await?;
            anyhow::Ok(version)
        }
        .await;
        client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK]).await?;
        self.give_back(session);
        result
    }
}

impl Pool {
    /// The secret kept under `name` for every replica: the one already
    /// stored, or else `fresh`, stored now (the first replica's wins).
    pub async fn shared_secret(&self, name: &str, fresh: &str) -> anyhow::Result<String> {
        let session = self.take().await?;
        let client = &session.client;
        client
            .execute(
                "INSERT INTO host_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &fresh],
            )
            .await?;
        let value: String = client.query_one("SELECT value FROM host_secrets WHERE name = $1", &[&name]).await?.get(0);
        self.give_back(session);
        Ok(value)
    }
}

/// A `spin:postgres` connection as the guest holds it.
pub struct Connection {
    session: Option<Session>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
    /// A transaction is open: roll it back before the connection is reused.
    began: bool,
}

/// Why a connection could not be opened.
pub enum OpenError {
    /// Every connection the pool may hold is in use.
    Busy,
    Failed(tokio_postgres::Error),
}

impl Connection {
    /// A connection of `pool`, waiting a bounded time for a free one.
    pub async fn open(pool: Arc<Pool>) -> Result<Self, OpenError> {
        let permit = match tokio::time::timeout(CHECKOUT_TIMEOUT, pool.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(OpenError::Busy),
        };
        let session = pool.take().await.map_err(OpenError::Failed)?;
        Ok(Connection { session: Some(session), pool, _permit: permit, began: false })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        let pool = self.pool.clone();
        if !self.began {
            pool.give_back(session);
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if session.client.batch_execute("ROLLBACK").await.is_ok() {
                    pool.give_back(session);
                }
            });
        }
    }
}

/// Whether a transaction is open after `statement`, given `open` before it.
fn in_transaction_after(statement: &str, open: bool) -> bool {
    let head: String = statement.trim_start().chars().take(11).collect::<String>().to_ascii_uppercase();
    if head.starts_with("BEGIN") || head.starts_with("START") {
        true
    } else if head.starts_with("COMMIT") || head.starts_with("END") || head == "ROLLBACK" || head.starts_with("ABORT") {
        false
    } else {
        open
    }
}

impl Connection {
    /// The prepared form of `statement` on this connection.
    pub async fn prepared(&mut self, statement: &str) -> Result<Option<(&Client, Statement)>, tokio_postgres::Error> {
        self.began = in_transaction_after(statement, self.began);
        let Some(session) = self.session.as_mut() else { return Ok(None) };
        if let Some(prepared) = session.statements.get(statement) {
            return Ok(Some((&session.client, prepared.clone())));
        }
        let prepared = session.client.prepare(statement).await?;
        if session.statements.len() >= STATEMENT_CACHE {
            session.statements.clear();
        }
        session.statements.insert(statement.to_string(), prepared.clone());
        Ok(Some((&session.client, prepared)))
    }
}

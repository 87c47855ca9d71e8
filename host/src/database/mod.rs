//! The app layer's database: one SQLite file under the data folder by
//! default, PostgreSQL with `--database-url`. Components reach it through
//! Spin's interfaces (`spin:sqlite@3.0.0`, `spin:postgres@4.0.0`), which
//! `sqlite.rs` and `postgres.rs` implement; the schema is this binary's and
//! is brought up to date at start (`migrations.rs`).
//!
//! A connection resource holds one database connection for its lifetime,
//! so a component may run a transaction over several statements; a
//! connection given back inside a transaction is rolled back first.

mod migrations;
pub use migrations::NewerSchema;
pub mod postgres;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

/// The database a server's components use.
pub enum Database {
    Sqlite(Arc<sqlite::Pool>),
    Postgres(Arc<postgres::Pool>),
}

impl Database {
    /// Opens `tern.db` in `data_dir` and migrates it to this binary's
    /// schema; a schema newer than the binary's is an error.
    pub async fn open_sqlite(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data folder {}", data_dir.display()))?;
        Self::migrated(Database::Sqlite(Arc::new(sqlite::Pool::new(data_dir.join("tern.db"))))).await
    }

    /// Opens the PostgreSQL database at `url` with a pool of `connections`
    /// and migrates it, as `open_sqlite` does.
    pub async fn open_postgres(url: &str, connections: usize) -> anyhow::Result<Self> {
        Self::migrated(Database::Postgres(Arc::new(postgres::Pool::new(url, connections)?))).await
    }

    async fn migrated(database: Self) -> anyhow::Result<Self> {
        let version = match &database {
            Database::Sqlite(pool) => pool.migrate().await,
            Database::Postgres(pool) => pool.migrate().await,
        }
        .with_context(|| format!("preparing the {} database", database.kind()))?;
        tracing::info!(database = database.kind(), schema = version, "database ready");
        Ok(database)
    }

    /// `sqlite` or `postgres`, as components read it from `wasi:config`.
    pub fn kind(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    pub fn sqlite(&self) -> Option<&Arc<sqlite::Pool>> {
        match self {
            Database::Sqlite(pool) => Some(pool),
            Database::Postgres(_) => None,
        }
    }

    pub fn postgres(&self) -> Option<&Arc<postgres::Pool>> {
        match self {
            Database::Postgres(pool) => Some(pool),
            Database::Sqlite(_) => None,
        }
    }
}

/// `~/.local/share/tern` (or under `XDG_DATA_HOME`).
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("tern");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/tern")
}

/// The sign-in signing secret: the one given, else the one kept in the data
/// folder, else a new random one written there (readable by the owner only).
pub fn signing_secret(given: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(secret) = given {
        anyhow::ensure!(secret.len() >= 16, "--jwt-secret must be at least 16 characters");
        return Ok(secret.to_string());
    }
    let path = data_dir.join("jwt-secret");
    if let Some(kept) = kept_secret(data_dir)? {
        return Ok(kept);
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating the data folder {}", data_dir.display()))?;
    let secret = random_secret()?;
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a sign-in signing secret");
    Ok(secret)
}

/// The signing secret kept in the data folder, if there is one.
pub fn kept_secret(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join("jwt-secret");
    let Ok(kept) = std::fs::read_to_string(&path) else { return Ok(None) };
    let kept = kept.trim();
    anyhow::ensure!(kept.len() >= 16, "{} holds a secret shorter than 16 characters", path.display());
    Ok(Some(kept.to_string()))
}

/// 32 random bytes in hex.
pub fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a secret: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Refuses a `--database-url` that is not a PostgreSQL URL, at start.
pub fn check_postgres_url(url: &str) -> anyhow::Result<()> {
    postgres::Pool::new(url, 1).map(drop)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

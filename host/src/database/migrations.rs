//! The app layer's schema, as numbered steps. Each step runs once, in a
//! transaction with the version bump, so a start that dies half-way leaves
//! the previous version; a database whose version is past the last step
//! here was written by a newer tern and is refused.
//!
//! Both databases get the same tables. Times are Unix seconds, flags 0 or 1
//! (`BIGINT` in both), JSON documents text; only binary columns differ
//! (`BLOB`, `BYTEA`).

/// One schema step, in each dialect: pieces of SQL run in order.
pub struct Migration {
    pub version: i64,
    pub sqlite: &'static [&'static str],
    pub postgres: &'static [&'static str],
}

/// The table holding the schema version (one row).
pub const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS tern_schema (version BIGINT NOT NULL)";

const V1_TABLES: &str = "
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    profile_image_url TEXT NOT NULL,
    password TEXT NOT NULL,
    api_key TEXT UNIQUE,
    session_stamp TEXT NOT NULL,
    settings TEXT,
    info TEXT,
    last_active_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE chats (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    title TEXT NOT NULL,
    chat TEXT NOT NULL,
    share_id TEXT UNIQUE,
    archived BIGINT NOT NULL DEFAULT 0,
    pinned BIGINT NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}',
    folder_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX chats_by_user ON chats (user_id, archived, updated_at);
CREATE TABLE shared_chats (
    id TEXT PRIMARY KEY,
    chat_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    title TEXT NOT NULL,
    chat TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE tags (
    id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (id, user_id)
);
CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE TABLE app_config (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

const V1_FILES_SQLITE: &str = "
CREATE TABLE files (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    hash TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    data BLOB NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX files_by_user ON files (user_id, created_at);
";

const V1_FILES_POSTGRES: &str = "
CREATE TABLE files (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    hash TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    data BYTEA NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX files_by_user ON files (user_id, created_at);
";

/// Secrets the host keeps for every replica (the sign-in signing secret).
const V2_HOST_SECRETS: &str = "
CREATE TABLE host_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Every step, oldest first.
pub const ALL: &[Migration] = &[
    Migration { version: 1, sqlite: &[V1_TABLES, V1_FILES_SQLITE], postgres: &[V1_TABLES, V1_FILES_POSTGRES] },
    Migration { version: 2, sqlite: &[V2_HOST_SECRETS], postgres: &[V2_HOST_SECRETS] },
];

/// The schema version this binary writes.
pub const LATEST_VERSION: i64 = 2;

/// Refuses a database from a newer tern.
pub fn check_not_newer(found: i64) -> anyhow::Result<()> {
    if found > LATEST_VERSION {
        return Err(NewerSchema { found }.into());
    }
    Ok(())
}

/// The database was written by a newer tern: waiting will not help.
#[derive(Debug)]
pub struct NewerSchema {
    found: i64,
}

impl std::fmt::Display for NewerSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the database's schema is version {}, newer than this tern's ({LATEST_VERSION}): \
             it was written by a newer tern; run that one, or point --data-dir/--database-url elsewhere",
            self.found
        )
    }
}

impl std::error::Error for NewerSchema {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_up_to_the_latest() {
        let steps = ALL;
        for (i, step) in steps.iter().enumerate() {
            assert_eq!(step.version, i as i64 + 1);
        }
        assert_eq!(steps.last().unwrap().version, LATEST_VERSION);
        assert!(check_not_newer(LATEST_VERSION).is_ok());
        assert!(check_not_newer(LATEST_VERSION + 1).unwrap_err().to_string().contains("newer"));
    }
}

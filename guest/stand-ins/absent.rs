//! What a runtime without tern's host lacks, answered plainly: settings
//! from the environment (`wasi:config`, key `k` from `TERN_K`), no app
//! database (`spin:sqlite` and `spin:postgres` refuse to open), so the
//! handler's app routes say 503 and everything else works, no usage
//! figures of the key-value store, and no Socket.IO sessions.

use crate::bindings::exports::spin::postgres::postgres::{
    self as pg, GuestConnection as PgConnection, ParameterValue, RowSet,
};
use crate::bindings::exports::spin::sqlite::sqlite::{self, GuestConnection, QueryResult, Value};
use crate::bindings::exports::tern::llm::sessions;
use crate::bindings::exports::tern::llm::store_usage::{self, BucketUsage};
use crate::bindings::exports::wasi::config::store::{self, Error as ConfigError};
use crate::Adapter;

impl store::Guest for Adapter {
    fn get(key: String) -> Result<Option<String>, ConfigError> {
        Ok(std::env::var(format!("TERN_{}", key.to_ascii_uppercase())).ok())
    }

    fn get_all() -> Result<Vec<(String, String)>, ConfigError> {
        Ok(std::env::vars().filter_map(|(k, v)| Some((k.strip_prefix("TERN_")?.to_ascii_lowercase(), v))).collect())
    }
}

/// A connection that cannot exist.
pub enum Never {}

impl sqlite::Guest for Adapter {
    type Connection = Never;
}

impl GuestConnection for Never {
    fn open(_database: String) -> Result<sqlite::Connection, sqlite::Error> {
        Err(sqlite::Error::NoSuchDatabase)
    }

    fn execute(&self, _statement: String, _parameters: Vec<Value>) -> Result<QueryResult, sqlite::Error> {
        match *self {}
    }

    fn last_insert_rowid(&self) -> i64 {
        match *self {}
    }

    fn changes(&self) -> u64 {
        match *self {}
    }
}

impl pg::Guest for Adapter {
    type Connection = Never;
}

impl PgConnection for Never {
    fn open(_address: String) -> Result<pg::Connection, pg::Error> {
        Err(pg::Error::ConnectionFailed("this runtime has no database".into()))
    }

    fn query(&self, _statement: String, _params: Vec<ParameterValue>) -> Result<RowSet, pg::Error> {
        match *self {}
    }

    fn execute(&self, _statement: String, _params: Vec<ParameterValue>) -> Result<u64, pg::Error> {
        match *self {}
    }
}

impl store_usage::Guest for Adapter {
    fn usage(_identifier: String) -> Option<BucketUsage> {
        None
    }
}

impl sessions::Guest for Adapter {
    fn open() -> Option<String> {
        None
    }

    fn bind(_id: String, _user: String) -> bool {
        false
    }

    fn user(_id: String) -> Option<String> {
        None
    }

    fn send(_id: String, _packets: Vec<String>) -> bool {
        false
    }

    fn send_to_user(_user: String, _packets: Vec<String>) -> u32 {
        0
    }

    fn take(_id: String, _wait_ms: u32, _max: u32) -> Option<sessions::Taken> {
        None
    }

    fn close(_id: String) {}
}

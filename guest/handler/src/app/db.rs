//! One way to talk SQL to SQLite or PostgreSQL.
//!
//! Statements are written once, with PostgreSQL's `$1` placeholders (the
//! SQLite side rewrites them as `?1`), and values are only ever bound as
//! parameters. The schema (the host's migrations) uses types both
//! databases share: `TEXT`, `BIGINT` (times and 0/1 flags), a binary
//! column for file contents.

use std::rc::Rc;

use super::AppError;

/// A value bound to, or read from, a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
    Null,
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Val::Text(s.to_string())
    }
}

impl From<String> for Val {
    fn from(s: String) -> Self {
        Val::Text(s)
    }
}

impl From<&String> for Val {
    fn from(s: &String) -> Self {
        Val::Text(s.clone())
    }
}

impl From<i64> for Val {
    fn from(i: i64) -> Self {
        Val::Int(i)
    }
}

impl From<bool> for Val {
    fn from(b: bool) -> Self {
        Val::Int(b.into())
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Self {
        v.map_or(Val::Null, Into::into)
    }
}

/// Which SQL the database speaks, where the two differ (the platform
/// says; natively there is none).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One row, its values read by column name.
#[derive(Debug, Clone)]
pub struct Row {
    pub columns: Rc<Vec<String>>,
    pub values: Vec<Val>,
}

impl Row {
    fn get(&self, column: &str) -> &Val {
        let i = self.columns.iter().position(|c| c == column);
        i.and_then(|i| self.values.get(i)).unwrap_or(&Val::Null)
    }

    /// Text (empty when null).
    pub fn text(&self, column: &str) -> String {
        self.opt_text(column).unwrap_or_default()
    }

    pub fn opt_text(&self, column: &str) -> Option<String> {
        match self.get(column) {
            Val::Text(t) => Some(t.clone()),
            Val::Int(i) => Some(i.to_string()),
            Val::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Val::Null => None,
        }
    }

    /// An integer (0 when null).
    pub fn int(&self, column: &str) -> i64 {
        match self.get(column) {
            Val::Int(i) => *i,
            Val::Text(t) => t.parse().unwrap_or(0),
            _ => 0,
        }
    }

    pub fn flag(&self, column: &str) -> bool {
        self.int(column) != 0
    }

    /// A binary column's bytes, moved out of the row (a file's contents
    /// are not copied).
    pub fn take_blob(&mut self, column: &str) -> Vec<u8> {
        let i = self.columns.iter().position(|c| c == column);
        match i.and_then(|i| self.values.get_mut(i)).map(|v| std::mem::replace(v, Val::Null)) {
            Some(Val::Blob(b)) => b,
            Some(Val::Text(t)) => t.into_bytes(),
            _ => Vec::new(),
        }
    }

    /// A JSON column (`default` when null or unparsable).
    pub fn json(&self, column: &str, default: serde_json::Value) -> serde_json::Value {
        self.opt_text(column).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(default)
    }
}

/// A database connection held for one request.
pub trait Db {
    fn dialect(&self) -> Dialect;
    /// Rows of a statement that returns rows. Parameters are taken by value
    /// so a large one (a file's bytes) is moved to the host, not copied.
    fn query(&self, sql: &str, params: Vec<Val>) -> Result<Vec<Row>, AppError>;
    /// Runs a statement that returns none; the number of rows it changed.
    fn execute(&self, sql: &str, params: Vec<Val>) -> Result<u64, AppError>;
}

impl dyn Db + '_ {
    /// The first row, if any.
    pub fn row(&self, sql: &str, params: Vec<Val>) -> Result<Option<Row>, AppError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The one integer a `SELECT COUNT(*)`-like statement returns.
    pub fn count(&self, sql: &str, params: Vec<Val>) -> Result<i64, AppError> {
        let row = self.row(sql, params)?;
        Ok(row.map_or(0, |r| match r.values.first() {
            Some(Val::Int(i)) => *i,
            Some(Val::Text(t)) => t.parse().unwrap_or(0),
            _ => 0,
        }))
    }

    /// Runs `work` in a transaction that holds the write lock from its start
    /// (SQLite `BEGIN IMMEDIATE`; PostgreSQL rows read with
    /// [`for_update`](Self::for_update)), committed when `work` succeeds.
    pub fn transaction<T>(&self, work: impl FnOnce(&Self) -> Result<T, AppError>) -> Result<T, AppError> {
        let begin = match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        };
        self.execute(begin, Vec::new())?;
        match work(self) {
            Ok(value) => {
                self.execute("COMMIT", Vec::new())?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.execute("ROLLBACK", Vec::new());
                Err(e)
            }
        }
    }

    /// The clause that locks the rows a `SELECT` reads until the
    /// transaction ends (SQLite's transaction already holds the lock).
    pub fn for_update(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// `$1`-style placeholders as SQLite's `?1`.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` as a `LIKE` pattern matching it anywhere (with `ESCAPE '\'`).
pub fn like_pattern(text: &str) -> String {
    let mut out = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A database that records the statements it is given.
    struct Recorder(Dialect, RefCell<Vec<String>>);

    impl Db for Recorder {
        fn dialect(&self) -> Dialect {
            self.0
        }

        fn query(&self, sql: &str, _: Vec<Val>) -> Result<Vec<Row>, AppError> {
            self.1.borrow_mut().push(sql.to_string());
            Ok(Vec::new())
        }

        fn execute(&self, sql: &str, _: Vec<Val>) -> Result<u64, AppError> {
            self.1.borrow_mut().push(sql.to_string());
            Ok(1)
        }
    }

    #[test]
    fn transactions_hold_the_write_lock_and_end_either_way() {
        let sqlite = Recorder(Dialect::Sqlite, RefCell::default());
        let db: &dyn Db = &sqlite;
        assert_eq!(db.transaction(|t| t.execute("UPDATE a", Vec::new())).unwrap(), 1);
        let failed = db.transaction(|t| -> Result<(), AppError> {
            t.execute("UPDATE b", Vec::new())?;
            Err(AppError::not_found())
        });
        assert_eq!(failed.unwrap_err().status, 404);
        assert_eq!(
            *sqlite.1.borrow(),
            ["BEGIN IMMEDIATE", "UPDATE a", "COMMIT", "BEGIN IMMEDIATE", "UPDATE b", "ROLLBACK"]
        );
        assert_eq!(db.for_update(), "");
        let postgres = Recorder(Dialect::Postgres, RefCell::default());
        let db: &dyn Db = &postgres;
        db.transaction(|t| t.query(&format!("SELECT 1{}", t.for_update()), Vec::new())).unwrap();
        assert_eq!(*postgres.1.borrow(), ["BEGIN", "SELECT 1 FOR UPDATE", "COMMIT"]);
    }

    #[test]
    fn placeholders_and_patterns() {
        assert_eq!(sqlite_placeholders("a = $1 AND b = $12 OR c = '$'"), "a = ?1 AND b = ?12 OR c = '$'");
        assert_eq!(like_pattern("50%_a\\B"), "%50\\%\\_a\\\\b%");
    }
}

//! The host side of `spin:postgres@4.0.0` over the PostgreSQL database
//! (`database::postgres`).
//!
//! A component may open only the server's own database: the address it
//! passes must be the configured URL, which it reads from `wasi:config`
//! (`database_url`). Parameters are converted to the types PostgreSQL asks
//! for (an `int64` fills an `INT4` column when it fits), and columns come
//! back as the interface's values by their types.

use std::error::Error as StdError;

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};
use wasmtime::component::Resource;

use crate::bindings::spin_postgres::{
    self as wit, Column, DbDataType, DbError, DbValue, Error, ParameterValue, QueryError, RowSet,
};
use crate::database::postgres::{Connection, OpenError};
use crate::state::HostState;

fn query_error(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::QueryFailed(QueryError::DbError(DbError {
            as_text: db.to_string(),
            severity: db.severity().to_string(),
            code: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(String::from),
            extras: Vec::new(),
        })),
        None => Error::QueryFailed(QueryError::Text(e.to_string())),
    }
}

/// A parameter, converted to whatever type its placeholder has.
#[derive(Debug)]
struct Param(ParameterValue);

type BoxError = Box<dyn StdError + Sync + Send>;

fn mismatch(value: &ParameterValue, ty: &Type) -> BoxError {
    format!("cannot pass {value:?} as {ty}").into()
}

impl Param {
    fn integer(&self) -> Option<i64> {
        match self.0 {
            ParameterValue::Int8(v) => Some(v.into()),
            ParameterValue::Int16(v) => Some(v.into()),
            ParameterValue::Int32(v) => Some(v.into()),
            ParameterValue::Int64(v) => Some(v),
            ParameterValue::Boolean(b) => Some(b.into()),
            _ => None,
        }
    }
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let value = &self.0;
        if matches!(value, ParameterValue::DbNull) {
            return Ok(IsNull::Yes);
        }
        let int = self.integer();
        match (value, ty) {
            (_, &Type::BOOL) => int.map(|i| i != 0).ok_or_else(|| mismatch(value, ty))?.to_sql(ty, out),
            (_, &Type::INT2) => i16::try_from(int.ok_or_else(|| mismatch(value, ty))?)?.to_sql(ty, out),
            (_, &Type::INT4) => i32::try_from(int.ok_or_else(|| mismatch(value, ty))?)?.to_sql(ty, out),
            (_, &Type::INT8) => int.ok_or_else(|| mismatch(value, ty))?.to_sql(ty, out),
            (ParameterValue::Floating32(f), &Type::FLOAT4) => f.to_sql(ty, out),
            (ParameterValue::Floating64(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (ParameterValue::Floating32(f), &Type::FLOAT8) => f64::from(*f).to_sql(ty, out),
            (ParameterValue::Str(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN) => {
                s.as_str().to_sql(&Type::TEXT, out)
            }
            (ParameterValue::Str(s) | ParameterValue::Uuid(s), &Type::UUID) => {
                let hex: String = s.chars().filter(|c| *c != '-').collect();
                if hex.len() != 32 {
                    return Err(mismatch(value, ty));
                }
                for i in 0..16 {
                    out.extend_from_slice(&[u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?]);
                }
                Ok(IsNull::No)
            }
            (ParameterValue::Binary(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (ParameterValue::Jsonb(b), &Type::JSONB) => {
                out.extend_from_slice(&[1]);
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
            (ParameterValue::Jsonb(b), &Type::JSON) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
            (ParameterValue::Timestamp(secs), &Type::TIMESTAMP | &Type::TIMESTAMPTZ) => {
                const UNIX_TO_2000: i64 = 946_684_800;
                ((secs - UNIX_TO_2000) * 1_000_000).to_sql(&Type::INT8, out)
            }
            _ => Err(mismatch(value, ty)),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A column's raw bytes, whatever its type.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn data_type(ty: &Type) -> DbDataType {
    match *ty {
        Type::BOOL => DbDataType::Boolean,
        Type::CHAR => DbDataType::Int8,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DbDataType::Str,
        Type::BYTEA => DbDataType::Binary,
        Type::UUID => DbDataType::Uuid,
        Type::JSONB | Type::JSON => DbDataType::Jsonb,
        _ => DbDataType::Other(ty.name().to_string()),
    }
}

fn be<const N: usize>(raw: &[u8]) -> Option<[u8; N]> {
    raw.try_into().ok()
}

/// One column's value by its type; types the interface has no plain value
/// for come back as `unsupported` with their raw bytes.
fn db_value(ty: &Type, raw: Option<&[u8]>) -> DbValue {
    let Some(raw) = raw else { return DbValue::DbNull };
    let decoded = match *ty {
        Type::BOOL => raw.first().map(|b| DbValue::Boolean(*b != 0)),
        Type::CHAR => be::<1>(raw).map(|b| DbValue::Int8(i8::from_be_bytes(b))),
        Type::INT2 => be::<2>(raw).map(|b| DbValue::Int16(i16::from_be_bytes(b))),
        Type::INT4 => be::<4>(raw).map(|b| DbValue::Int32(i32::from_be_bytes(b))),
        Type::INT8 => be::<8>(raw).map(|b| DbValue::Int64(i64::from_be_bytes(b))),
        Type::FLOAT4 => be::<4>(raw).map(|b| DbValue::Floating32(f32::from_be_bytes(b))),
        Type::FLOAT8 => be::<8>(raw).map(|b| DbValue::Floating64(f64::from_be_bytes(b))),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            Some(DbValue::Str(String::from_utf8_lossy(raw).into_owned()))
        }
        Type::BYTEA => Some(DbValue::Binary(raw.to_vec())),
        Type::JSONB => raw.split_first().map(|(_, json)| DbValue::Jsonb(json.to_vec())),
        Type::JSON => Some(DbValue::Jsonb(raw.to_vec())),
        Type::UUID if raw.len() == 16 => {
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            Some(DbValue::Uuid(format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )))
        }
        _ => None,
    };
    decoded.unwrap_or_else(|| DbValue::Unsupported(raw.to_vec()))
}

fn params(values: Vec<ParameterValue>) -> Vec<Param> {
    values.into_iter().map(Param).collect()
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// `statement` prepared on the connection, failures as the guest's error.
async fn prepare<'a>(
    connection: &'a mut Connection,
    statement: &str,
) -> Result<(&'a tokio_postgres::Client, tokio_postgres::Statement), Error> {
    match connection.prepared(statement).await {
        Ok(Some(prepared)) => Ok(prepared),
        Ok(None) => Err(Error::Other("the connection is closed".into())),
        Err(e) => Err(query_error(e)),
    }
}

impl wit::Host for HostState {}

impl wit::HostConnection for HostState {
    async fn open(&mut self, address: String) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        let Some(pool) = self.app.database().and_then(|d| d.postgres()).cloned() else {
            return Ok(Err(Error::ConnectionFailed("this server has no PostgreSQL database".into())));
        };
        if address != pool.url {
            return Ok(Err(Error::ConnectionFailed("only the server's own database may be opened".into())));
        }
        match Connection::open(pool).await {
            Ok(handle) => Ok(Ok(self.table.push(handle)?)),
            Err(OpenError::Busy) => Ok(Err(Error::ConnectionFailed("every database connection is busy".into()))),
            Err(OpenError::Failed(e)) => Ok(Err(Error::ConnectionFailed(e.to_string()))),
        }
    }

    async fn query(
        &mut self,
        this: Resource<Connection>,
        statement: String,
        values: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<RowSet, Error>> {
        let (client, prepared) = match prepare(self.table.get_mut(&this)?, &statement).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let params = params(values);
        let rows = match client.query(&prepared, &refs(&params)).await {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(query_error(e))),
        };
        let columns: Vec<Column> = prepared
            .columns()
            .iter()
            .map(|c| Column { name: c.name().to_string(), data_type: data_type(c.type_()) })
            .collect();
        let types: Vec<Type> = prepared.columns().iter().map(|c| c.type_().clone()).collect();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut values = Vec::with_capacity(types.len());
            for (i, ty) in types.iter().enumerate() {
                let raw: Option<Raw> = match row.try_get(i) {
                    Ok(raw) => raw,
                    Err(e) => return Ok(Err(Error::ValueConversionFailed(e.to_string()))),
                };
                values.push(db_value(ty, raw.map(|r| r.0)));
            }
            out.push(values);
        }
        Ok(Ok(RowSet { columns, rows: out }))
    }

    async fn execute(
        &mut self,
        this: Resource<Connection>,
        statement: String,
        values: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let (client, prepared) = match prepare(self.table.get_mut(&this)?, &statement).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let params = params(values);
        Ok(client.execute(&prepared, &refs(&params)).await.map_err(query_error))
    }

    async fn drop(&mut self, this: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

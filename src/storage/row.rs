//! The one policy for stored data that does not map to its domain type.
//!
//! Every table has a private row struct (`#[derive(sqlx::FromRow)]`, the columns as the
//! `Any` driver decodes them: integers, floats, text) and a `TryFrom` into its domain type.
//! [`map_row`] is the only place a row becomes a domain value: a column that does not decode
//! (a text in an integer column), a time out of range, a JSON column that does not parse, an
//! unknown state name... is an error that names the table, the row (its key) and the column,
//! logged there once, and returned as an internal error. Nothing falls back to a default.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::domain::Error;

/// A row struct: its table and the columns that name one of its rows in errors.
pub(super) trait Table: for<'r> FromRow<'r, AnyRow> {
    const TABLE: &'static str;
    /// The key columns (read from the raw row only when reporting an error).
    const KEY: &'static [&'static str];
}

/// What is wrong with one column of a row (the table and row are added by [`map_row`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Corrupt {
    pub column: String,
    pub problem: String,
}

impl Corrupt {
    pub fn new(column: &str, problem: impl Into<String>) -> Corrupt {
        Corrupt { column: column.to_string(), problem: problem.into() }
    }
}

/// A stored row that does not map to its domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt data in table `{table}`, row `{row}`, column `{column}`: {problem}")]
pub struct CorruptRow {
    pub table: &'static str,
    pub row: String,
    pub column: String,
    pub problem: String,
}

/// Maps one row under the policy: decode the row struct, convert it, and on failure log and
/// return an error naming the table, the row and the column.
pub(super) fn map_row<R, T>(row: &AnyRow) -> crate::domain::Result<T>
where
    R: Table,
    T: TryFrom<R, Error = Corrupt>,
{
    check_row::<R, T>(row).map_err(|corrupt| {
        tracing::error!(table = corrupt.table, row = %corrupt.row, column = %corrupt.column, problem = %corrupt.problem, "corrupt row in the database");
        Error::Internal(anyhow::Error::new(corrupt))
    })
}

/// Maps many rows; the first that does not map is the error.
pub(super) fn map_rows<R, T>(rows: &[AnyRow]) -> crate::domain::Result<Vec<T>>
where
    R: Table,
    T: TryFrom<R, Error = Corrupt>,
{
    rows.iter().map(map_row::<R, T>).collect()
}

/// [`map_row`] without the logging.
pub(super) fn check_row<R, T>(row: &AnyRow) -> Result<T, CorruptRow>
where
    R: Table,
    T: TryFrom<R, Error = Corrupt>,
{
    let corrupt = |c: Corrupt| CorruptRow { table: R::TABLE, row: row_key(row, R::KEY), column: c.column, problem: c.problem };
    let raw = R::from_row(row).map_err(|e| corrupt(decode_failure(e)))?;
    T::try_from(raw).map_err(corrupt)
}

/// The row's key, for messages: each key column as text or integer, joined by `/`.
fn row_key(row: &AnyRow, key: &[&str]) -> String {
    key.iter()
        .map(|column| {
            row.try_get::<String, _>(*column)
                .or_else(|_| row.try_get::<i64, _>(*column).map(|n| n.to_string()))
                .unwrap_or_else(|_| "?".to_string())
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The column and cause of a row struct that did not decode.
fn decode_failure(error: sqlx::Error) -> Corrupt {
    match error {
        sqlx::Error::ColumnDecode { index, source } => Corrupt::new(index.trim_matches('"'), source.to_string()),
        sqlx::Error::ColumnNotFound(column) => Corrupt::new(&column, "no such column"),
        other => Corrupt::new("?", other.to_string()),
    }
}

// ---- column conversions, each naming its column ----

/// A time stored as Unix milliseconds.
pub(super) fn time(column: &'static str, millis: i64) -> Result<DateTime<Utc>, Corrupt> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| Corrupt::new(column, format!("{millis} is not a time in Unix milliseconds")))
}

pub(super) fn time_opt(column: &'static str, millis: Option<i64>) -> Result<Option<DateTime<Utc>>, Corrupt> {
    millis.map(|m| time(column, m)).transpose()
}

/// A JSON column, parsed into its serde type.
pub(super) fn json<T: DeserializeOwned>(column: &'static str, text: &str) -> Result<T, Corrupt> {
    serde_json::from_str(text).map_err(|e| Corrupt::new(column, format!("invalid JSON: {e}")))
}

pub(super) fn json_opt<T: DeserializeOwned>(column: &'static str, text: Option<&str>) -> Result<Option<T>, Corrupt> {
    text.map(|t| json(column, t)).transpose()
}

/// An integer column that must fit `T` (a count, a size, a code).
pub(super) fn int<T: TryFrom<i64>>(column: &'static str, value: i64) -> Result<T, Corrupt> {
    T::try_from(value).map_err(|_| Corrupt::new(column, format!("{value} is out of range")))
}

/// A boolean stored as 0 or 1.
pub(super) fn flag(column: &'static str, value: i64) -> Result<bool, Corrupt> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(Corrupt::new(column, format!("{other} is not 0 or 1"))),
    }
}

/// A text column naming one of a few values (a state, a mode).
/// A text column that holds a parsed domain value (a product name, a hardware id...): text
/// that no longer parses is corrupt, with the parser's reason.
pub(super) fn parsed<T>(column: &'static str, text: &str, parse: impl FnOnce(&str) -> crate::domain::Result<T>) -> Result<T, Corrupt> {
    parse(text).map_err(|e| Corrupt::new(column, e.to_string()))
}

/// [`parsed`] for a nullable column.
pub(super) fn parsed_opt<T>(
    column: &'static str,
    text: Option<&str>,
    parse: impl FnOnce(&str) -> crate::domain::Result<T>,
) -> Result<Option<T>, Corrupt> {
    text.map(|text| parsed(column, text, parse)).transpose()
}

/// [`parsed`] for each entry of a JSON array of texts.
pub(super) fn parsed_list<T>(
    column: &'static str,
    texts: Vec<String>,
    parse: impl Fn(&str) -> crate::domain::Result<T>,
) -> Result<Vec<T>, Corrupt> {
    texts.iter().map(|text| parsed(column, text, &parse)).collect()
}

pub(super) fn named<T>(column: &'static str, text: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<T, Corrupt> {
    parse(text).ok_or_else(|| Corrupt::new(column, format!("unknown value `{}`", text.chars().take(64).collect::<String>())))
}

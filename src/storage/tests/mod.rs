//! Storage's own tests, on an in-memory SQLite database with every migration applied: the
//! row mapping policy, the dynamic filters, partial updates and the names of unique
//! constraints. The end-to-end tests (`tests/api`) run the same code on PostgreSQL too.

use chrono::{Duration, Utc};
use serde_json::json;

use super::*;
use crate::domain::Error;
use crate::domain::device::{DeviceFilter, DevicePatch, DeviceSort};
use crate::domain::firmware::Channel;
use crate::domain::mac::Mac;

mod accounts;
mod constraints;
mod filters;
mod policy;
mod updates;

/// A fresh in-memory database. One connection: every connection to `:memory:` would see a
/// database of its own.
async fn memory_store() -> Store {
    Store::connect("sqlite::memory:", 1).await.expect("an in-memory database")
}

fn new_device(mac: &str) -> NewDevice {
    NewDevice {
        mac: Some(Mac::parse(mac).expect("a MAC")),
        uid: None,
        name: mac.to_string(),
        product: None,
        hardware: None,
        channel: Channel::stable(),
        version: None,
        target_version: None,
        tags: Vec::new(),
        attributes: json!({}),
        metadata: json!({}),
        owner: None,
        token_hash: None,
    }
}

/// Runs a statement as is: how tests corrupt stored data.
async fn execute(store: &Store, sql: &'static str) {
    sqlx::query(sql).execute(&store.pool).await.expect("the statement runs");
}

/// The corrupt row an error reports.
fn corrupt_row(error: Error) -> CorruptRow {
    match error {
        Error::Internal(cause) => cause.downcast_ref::<CorruptRow>().cloned().unwrap_or_else(|| panic!("not a corrupt row: {cause:?}")),
        other => panic!("not an internal error: {other:?}"),
    }
}

fn in_a_minute() -> chrono::DateTime<Utc> {
    Utc::now() + Duration::minutes(1)
}

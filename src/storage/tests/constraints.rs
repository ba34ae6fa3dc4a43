//! A unique violation names its constraint: each one a client can run into is its own
//! conflict, the others are internal errors that name it.

use sqlx::Row;

use super::*;
use crate::domain::device::{Product, Provisioning};
use crate::domain::rollout::Release;
use crate::storage::sql::{UNIQUE_CONSTRAINTS, violated_constraint};

fn conflict_code(error: &Error) -> &'static str {
    match error {
        Error::Conflict { code, .. } => code,
        other => panic!("not a conflict: {other:?}"),
    }
}

/// Every unique index and primary key of the schema (read from SQLite's catalog) is listed,
/// with the columns SQLite names in its error messages.
#[tokio::test]
async fn every_unique_index_of_the_schema_is_known_by_name_and_columns() {
    let store = memory_store().await;
    let tables = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'")
        .fetch_all(&store.pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for table in tables {
        let table: String = table.get("name");
        let indexes =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT name, \"unique\" AS is_unique, origin FROM pragma_index_list('{table}')")))
                .fetch_all(&store.pool)
                .await
                .unwrap();
        for index in indexes {
            if index.get::<i64, _>("is_unique") == 0 {
                continue;
            }
            let index_name: String = index.get("name");
            let columns = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT name FROM pragma_index_info('{index_name}') ORDER BY seqno")))
                .fetch_all(&store.pool)
                .await
                .unwrap();
            let columns: Vec<String> = columns.iter().map(|c| format!("{table}.{}", c.get::<String, _>("name"))).collect();
            let name = if index.get::<String, _>("origin") == "pk" { format!("{table}_pkey") } else { index_name };
            let listed =
                UNIQUE_CONSTRAINTS.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{name} is not in UNIQUE_CONSTRAINTS"));
            assert_eq!(listed.sqlite_columns, columns.join(", "), "{name}");
            seen.push(name);
        }
    }
    for constraint in UNIQUE_CONSTRAINTS {
        assert!(seen.iter().any(|name| name == constraint.name), "{} is not in the schema", constraint.name);
    }
}

#[tokio::test]
async fn a_duplicate_mac_is_device_exists_and_a_duplicate_token_is_not() {
    let store = memory_store().await;
    let mut first = new_device("02:00:00:00:03:01");
    first.token_hash = Some("same-digest".into());
    store.insert_device(&first).await.unwrap();

    let error = store.insert_device(&new_device("02:00:00:00:03:01")).await.unwrap_err();
    assert_eq!(conflict_code(&error), "device_exists");
    assert!(error.to_string().contains("02:00:00:00:03:01"), "{error}");

    // Before, every unique violation of this insert read as "MAC already registered".
    let mut second = new_device("02:00:00:00:03:02");
    second.token_hash = Some("same-digest".into());
    match store.insert_device(&second).await.unwrap_err() {
        Error::Internal(cause) => assert!(format!("{cause:#}").contains("device_token_hash_idx"), "{cause:#}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn each_client_facing_constraint_is_its_own_conflict() {
    let store = memory_store().await;
    store.insert_group(&"g1".into(), "kitchen", &[]).await.unwrap();
    assert_eq!(conflict_code(&store.insert_group(&"g2".into(), "kitchen", &[]).await.unwrap_err()), "group_exists");
    store.insert_group(&"g3".into(), "hall", &[]).await.unwrap();
    assert_eq!(conflict_code(&store.change_group(&"g3".into(), Some("kitchen"), &[], &[]).await.unwrap_err()), "group_exists");

    let release = |id: &str, version: &str, artifacts: &[&str]| Release {
        id: id.into(),
        product: "lamp".parse().unwrap(),
        version: version.into(),
        version_key: version.parse().unwrap(),
        channel: Channel::stable(),
        notes: String::new(),
        artifact_ids: artifacts.iter().map(|a| (*a).into()).collect(),
        created_at: Utc::now(),
    };
    execute(&store, "PRAGMA foreign_keys = OFF").await;
    store.insert_release(&release("r1", "1.0.0", &["build-1"])).await.unwrap();
    assert_eq!(conflict_code(&store.insert_release(&release("r2", "1.0.0", &[])).await.unwrap_err()), "release_exists");
    assert_eq!(conflict_code(&store.insert_release(&release("r3", "1.1.0", &["build-1"])).await.unwrap_err()), "artifact_in_release");

    let product = |name: &str| Product {
        name: name.parse().unwrap(),
        provisioning: Provisioning::Key,
        provision_key: Some("shared-key".into()),
        provision_secret_hash: Some("digest".into()),
        poll_interval_s: 60,
        hardware: Vec::new(),
        public_secrets: false,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    store.upsert_product(&product("lamp"), None).await.unwrap();
    assert_eq!(conflict_code(&store.upsert_product(&product("plug"), None).await.unwrap_err()), "provision_key_taken");
    // The same product again is an update, not a conflict.
    store.upsert_product(&product("lamp"), None).await.unwrap();

    assert!(store.insert_server_secret("admin", "a").await.unwrap());
    assert!(!store.insert_server_secret("admin", "b").await.unwrap());
}

#[tokio::test]
async fn sqlite_messages_map_to_constraint_names() {
    let store = memory_store().await;
    let device = store.insert_device(&new_device("02:00:00:00:03:03")).await.unwrap();
    let error = sqlx::query("INSERT INTO device_tag (device_id, tag) VALUES ($1, 't'), ($1, 't')")
        .bind(device.id.as_str())
        .execute(&store.pool)
        .await
        .unwrap_err();
    assert_eq!(violated_constraint(&error).as_deref(), Some("device_tag_pkey"));
    let not_unique = sqlx::query("INSERT INTO device (id) VALUES ('only-an-id')").execute(&store.pool).await.unwrap_err();
    assert_eq!(violated_constraint(&not_unique), None, "a NOT NULL violation is not a unique one");
}

//! One policy for stored data that does not map: an error naming the table, the row and
//! the column, logged once, whichever query reads the row.

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::*;
use crate::domain::device::{Product, Provisioning};

/// The fields every corrupt-row error must name.
fn assert_names(corrupt: &CorruptRow, table: &str, row: &str, column: &str) {
    assert_eq!((corrupt.table, corrupt.row.as_str(), corrupt.column.as_str()), (table, row, column), "{corrupt}");
    let message = corrupt.to_string();
    assert!(message.contains(table) && message.contains(row) && message.contains(column), "{message}");
}

#[tokio::test]
async fn a_time_out_of_range_is_an_error_not_1970() {
    let store = memory_store().await;
    let device = store.insert_device(&new_device("02:00:00:00:00:01")).await.unwrap();
    execute(&store, "UPDATE device SET created_at = 9223372036854775807").await;
    assert_names(&corrupt_row(store.find_device(&device.id).await.unwrap_err()), "device", &device.id, "created_at");
    let everyone = DeviceFilter { limit: 10, ..Default::default() };
    assert_names(&corrupt_row(store.list_devices(&everyone).await.unwrap_err()), "device", &device.id, "created_at");
}

#[tokio::test]
async fn an_unknown_provisioning_mode_is_an_error_not_preregistered() {
    let store = memory_store().await;
    let product = Product {
        name: "lamp".parse().unwrap(),
        provisioning: Provisioning::Open,
        provision_key: None,
        provision_secret_hash: None,
        poll_interval_s: 60,
        hardware: Vec::new(),
        public_secrets: false,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    store.upsert_product(&product, None).await.unwrap();
    execute(&store, "UPDATE product SET provisioning = 'whoever-asks'").await;
    assert_names(&corrupt_row(store.find_product("lamp").await.unwrap_err()), "product", "lamp", "provisioning");
    assert_names(&corrupt_row(store.list_products().await.unwrap_err()), "product", "lamp", "provisioning");
}

#[tokio::test]
async fn bad_tags_are_the_same_error_in_every_reader_of_the_device() {
    let store = memory_store().await;
    let mut new = new_device("02:00:00:00:00:02");
    new.token_hash = Some("digest".into());
    new.product = Some("lamp".parse().unwrap());
    let device = store.insert_device(&new).await.unwrap();
    execute(&store, "UPDATE device SET tags = 'not json'").await;
    // The registry, the fleet index (miss path and start-up load) and the target counts.
    let errors = [
        store.find_device(&device.id).await.unwrap_err(),
        store.find_active_device("digest").await.unwrap_err(),
        store.list_active_devices("", 10).await.unwrap_err(),
        store.target_rows("lamp", "", 10).await.unwrap_err(),
        store.target_rows_by_ids(&[device.id.to_string()]).await.unwrap_err(),
    ];
    for error in errors {
        assert_names(&corrupt_row(error), "device", &device.id, "tags");
    }
}

#[tokio::test]
async fn a_stored_name_that_no_longer_parses_is_an_error_naming_its_column() {
    let store = memory_store().await;
    let device = store.insert_device(&new_device("02:00:00:00:00:07")).await.unwrap();
    execute(&store, "UPDATE device SET product = '..'").await;
    let corrupt = corrupt_row(store.find_device(&device.id).await.unwrap_err());
    assert_names(&corrupt, "device", &device.id, "product");
    assert!(corrupt.problem.contains("product `..`"), "{corrupt}");
    execute(&store, "UPDATE device SET product = NULL, hardware = 'esp32;rm'").await;
    assert_names(&corrupt_row(store.find_device(&device.id).await.unwrap_err()), "device", &device.id, "hardware");
}

#[tokio::test]
async fn a_text_in_an_integer_column_names_its_row_and_column() {
    let store = memory_store().await;
    let device = store.insert_device(&new_device("02:00:00:00:00:03")).await.unwrap();
    // SQLite keeps a text that does not look like a number as text, even in a BIGINT column.
    execute(&store, "UPDATE device SET last_seen = 'yesterday'").await;
    let corrupt = corrupt_row(store.find_device(&device.id).await.unwrap_err());
    assert_names(&corrupt, "device", &device.id, "last_seen");
}

#[tokio::test]
async fn unknown_states_and_bad_json_are_errors_not_defaults() {
    let store = memory_store().await;
    let device = store.insert_device(&new_device("02:00:00:00:00:04")).await.unwrap();

    // An attempt in an unknown state read as `offered` before.
    let offer = AttemptOffer {
        device_id: &device.id,
        artifact_id: "a1",
        release_id: "a1",
        from_version: None,
        to_version: "2.0.0",
        rollout: None,
        replacing: None,
    };
    let attempt = store.open_attempt(&offer).await.unwrap().unwrap();
    execute(&store, "UPDATE update_attempt SET state = 'exploded'").await;
    assert_names(&corrupt_row(store.current_attempt(&device.id).await.unwrap_err()), "update_attempt", &attempt.id, "state");

    // A command in an unknown state read as `failed`, and bad parameters as none.
    let command = crate::domain::command::Command {
        id: "c1".into(),
        device_id: device.id.clone(),
        name: "reboot".into(),
        params: Some(json!({"delay_s": 1})),
        state: crate::domain::command::CommandState::Sent,
        result: None,
        error: None,
        created_by: "operator".into(),
        created_at: Utc::now(),
        expires_at: in_a_minute(),
        completed_at: None,
    };
    store.insert_command(&command).await.unwrap();
    execute(&store, "UPDATE device_command SET params = '{broken'").await;
    assert_names(&corrupt_row(store.find_command("c1").await.unwrap_err()), "device_command", "c1", "params");
    execute(&store, "UPDATE device_command SET params = NULL, state = 'maybe'").await;
    assert_names(&corrupt_row(store.find_command("c1").await.unwrap_err()), "device_command", "c1", "state");

    // A setup status without its time.
    store.insert_setup_event(&device.id, 1, "CONNECTING_TO_WIFI", "").await.unwrap();
    execute(&store, r#"UPDATE device SET setup_status = '{"code": 1, "title": "x", "description": ""}'"#).await;
    assert_names(&corrupt_row(store.find_device(&device.id).await.unwrap_err()), "device", &device.id, "setup_status");
}

/// A writer that keeps what the log subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_corrupt_row_is_logged_once_with_its_table_row_and_column() {
    let store = memory_store().await;
    let device = store.insert_device(&new_device("02:00:00:00:00:05")).await.unwrap();
    execute(&store, "UPDATE device SET metadata = '[unclosed'").await;

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let error = {
        let _guard = tracing::subscriber::set_default(subscriber);
        store.find_device(&device.id).await.unwrap_err()
    };
    assert_names(&corrupt_row(error), "device", &device.id, "metadata");
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("corrupt row")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    for field in ["table=\"device\"", &format!("row={}", device.id), "column=metadata"] {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
}

#[tokio::test]
async fn rows_written_by_storage_read_back_unchanged() {
    let store = memory_store().await;
    let mut new = new_device("02:00:00:00:00:06");
    new.tags = vec!["a".into(), "b".into()];
    new.attributes = json!({"fw": {"idf": "5.1"}});
    new.metadata = json!({"site": "north"});
    let device = store.insert_device(&new).await.unwrap();
    store.insert_setup_event(&device.id, 4, "CONFIG_FINISHED", "done").await.unwrap();
    let read = store.find_device(&device.id).await.unwrap().unwrap();
    assert_eq!((read.tags.clone(), read.attributes.clone(), read.metadata.clone()), (new.tags, new.attributes, new.metadata));
    let status = read.setup_status.unwrap();
    assert_eq!((status.code, status.title.as_str(), status.description.as_str()), (4, "CONFIG_FINISHED", "done"));
    assert_eq!(store.list_setup_events(&device.id).await.unwrap().len(), 1);
}

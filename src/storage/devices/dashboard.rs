//! The dashboard's fleet-wide reads: the fleet summary and the attempts of every device.

use super::*;
use crate::domain::device::{AttemptFilter, FleetAttempt};

/// Devices of one (product, hardware, version, presence) combination.
#[derive(Debug)]
pub struct SummaryRow {
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub version: Option<String>,
    pub online: bool,
    pub devices: u64,
}

impl Store {
    /// The fleet (of one product if given) grouped by product, hardware, version and
    /// presence (seen at or after `online_cutoff`, Unix ms): one grouped pass over the device
    /// table (an index covers it).
    pub async fn device_summary(&self, product: Option<&str>, online_cutoff: i64) -> Result<Vec<SummaryRow>> {
        let mut query = Builder::new("SELECT product, hardware, version, CASE WHEN last_seen >= ");
        query.push_bind(online_cutoff).push(" THEN 1 ELSE 0 END AS online, COUNT(*) AS n FROM device");
        if let Some(product) = product {
            query.push(" WHERE product = ").push_bind(product.to_string());
        }
        // By position: PostgreSQL would see a second bound cutoff as another expression.
        query.push(" GROUP BY 1, 2, 3, 4");
        let rows = sql::fetch_all(query, &self.pool).await.map_err(|e| db_error(e, "failed to summarise devices"))?;
        let decode = |e| db_error(e, "failed to decode a device summary");
        rows.iter()
            .map(|r| {
                Ok(SummaryRow {
                    product: r.try_get("product").map_err(decode)?,
                    hardware: r.try_get("hardware").map_err(decode)?,
                    version: r.try_get("version").map_err(decode)?,
                    online: r.try_get::<i64, _>("online").map_err(decode)? == 1,
                    devices: r.try_get::<i64, _>("n").map_err(decode)?.max(0) as u64,
                })
            })
            .collect()
    }

    /// Update attempts of every device that `filter` selects, most recently changed first,
    /// each with its events and device, and how many it selects in all.
    pub async fn list_fleet_attempts(&self, filter: &AttemptFilter) -> Result<(Vec<FleetAttempt>, u64)> {
        let push_filter = |query: &mut Builder| {
            let mut conditions = query.separated(" WHERE ", " AND ");
            if !filter.states.is_empty() {
                conditions.next().push("a.state IN (").push_list(filter.states.iter().map(|s| s.as_str())).push(")");
            }
            if let Some(since) = filter.since {
                conditions.next().push("a.updated_at >= ").push_bind(since);
            }
            if let Some(product) = &filter.product {
                conditions.next().push("d.product = ").push_bind(product.clone());
            }
        };
        let mut count = Builder::new("SELECT COUNT(*) AS n FROM update_attempt a JOIN device d ON d.id = a.device_id");
        push_filter(&mut count);
        let total: i64 = count.build().fetch_one(&self.pool).await.map_err(|e| db_error(e, "failed to count attempts"))?.get("n");
        let columns = ATTEMPT_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ");
        let mut list = Builder::new(&format!(
            "SELECT {columns}, d.name AS device_name, d.mac AS device_mac, d.product AS device_product \
             FROM update_attempt a JOIN device d ON d.id = a.device_id"
        ));
        push_filter(&mut list);
        list.push(" ORDER BY a.updated_at DESC, a.id DESC");
        list.push(&format!(" LIMIT {} OFFSET {}", filter.limit, filter.offset));
        let rows = sql::fetch_all(list, &self.pool).await.map_err(|e| db_error(e, "failed to list attempts"))?;
        let attempts = map_rows::<AttemptRow, UpdateAttempt>(&rows)?;
        let decode = |e| db_error(e, "failed to decode an attempt's device");
        let mut items = Vec::with_capacity(attempts.len());
        for (attempt, row) in attempts.into_iter().zip(&rows) {
            items.push(FleetAttempt {
                attempt,
                device_name: row.try_get("device_name").map_err(decode)?,
                mac: row.try_get("device_mac").map_err(decode)?,
                product: row.try_get("device_product").map_err(decode)?,
            });
        }
        if !items.is_empty() {
            let mut events = Builder::new("SELECT id, attempt_id, state, progress, message, at FROM update_event WHERE attempt_id IN (");
            events.push_list(items.iter().map(|i| i.attempt.id.to_string())).push(") ORDER BY id");
            let rows = sql::fetch_all(events, &self.pool).await.map_err(|e| db_error(e, "failed to read update events"))?;
            let parsed = map_rows::<UpdateEventRow, UpdateEvent>(&rows)?;
            let mut by_attempt: std::collections::HashMap<String, Vec<UpdateEvent>> = std::collections::HashMap::new();
            for (event, row) in parsed.into_iter().zip(&rows) {
                let attempt_id: String = row.try_get("attempt_id").map_err(|e| db_error(e, "failed to decode an update event"))?;
                by_attempt.entry(attempt_id).or_default().push(event);
            }
            for item in &mut items {
                item.attempt.events = by_attempt.remove(item.attempt.id.as_str()).unwrap_or_default();
            }
        }
        Ok((items, total.max(0) as u64))
    }
}

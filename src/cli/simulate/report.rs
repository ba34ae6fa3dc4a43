//! The JSON report written at the end (`--report`): every device's final version and update
//! state, and totals in the rollout's terms (`GET /api/v1/rollouts/{id}` `counts`), so a run
//! can be checked against the server.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::fleet::{Device, Phase, Shared, UpdateState};

#[derive(Serialize)]
pub struct Report {
    pub server: String,
    pub product: String,
    pub protocols: Vec<&'static str>,
    pub seed: u64,
    pub started_at: String,
    pub duration_s: f64,
    pub devices: u32,
    /// Devices by the state of their current update, in the rollout's terms: `downloaded`
    /// counts as `downloading`, `rejected` as `failed`; devices never offered anything and
    /// cancelled updates are left out.
    pub totals: Totals,
    /// Devices by the exact state of their current update (`none`: never offered).
    pub states: BTreeMap<&'static str, u64>,
    /// Devices by the version they run.
    pub versions: BTreeMap<String, u64>,
    /// Devices that stopped talking (`--silent`).
    pub silent: u64,
    pub requests: u64,
    pub offers: u64,
    /// Errors by kind (`http_<status>_<code>`, `unreachable`, `download`, `mqtt_refused`, ...).
    pub errors: BTreeMap<String, u64>,
    pub device_reports: Vec<DeviceReport>,
}

#[derive(Serialize, Default)]
pub struct Totals {
    pub offered: u64,
    pub downloading: u64,
    pub installing: u64,
    pub installed: u64,
    pub succeeded: u64,
    pub failed: u64,
}

#[derive(Serialize)]
pub struct DeviceReport {
    pub index: u32,
    pub mac: String,
    pub device_id: Option<String>,
    pub protocol: &'static str,
    pub version: String,
    /// The state of its current update (`none`: never offered).
    pub state: &'static str,
    /// Its current update's release id (the DDI action id for `ddi`).
    pub release_id: Option<String>,
    pub target_version: Option<String>,
    pub silent: bool,
    pub errors: u32,
}

impl Report {
    pub fn build(shared: &Shared, devices: &[Device], started_at: chrono::DateTime<chrono::Utc>, elapsed: Duration) -> Report {
        let plan = &shared.plan;
        let mut totals = Totals::default();
        let mut states: BTreeMap<&'static str, u64> = UpdateState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let mut versions = BTreeMap::new();
        let mut silent = 0;
        for device in devices {
            *states.entry(device.state.as_str()).or_insert(0) += 1;
            *versions.entry(device.version.to_string()).or_insert(0) += 1;
            silent += u64::from(device.phase == Phase::Silent);
            match device.state {
                UpdateState::Offered => totals.offered += 1,
                UpdateState::Downloading | UpdateState::Downloaded => totals.downloading += 1,
                UpdateState::Installing => totals.installing += 1,
                UpdateState::Installed => totals.installed += 1,
                UpdateState::Succeeded => totals.succeeded += 1,
                UpdateState::Failed | UpdateState::Rejected => totals.failed += 1,
                UpdateState::None | UpdateState::Cancelled => {}
            }
        }
        let mut protocols: Vec<&'static str> = plan.protocols.iter().map(|p| p.as_str()).collect();
        protocols.dedup();
        Report {
            server: plan.base.clone(),
            product: plan.product.clone(),
            protocols,
            seed: plan.seed,
            started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            duration_s: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            devices: plan.devices,
            totals,
            states,
            versions,
            silent,
            requests: shared.stats.requests.load(Ordering::Relaxed),
            offers: shared.stats.offers.load(Ordering::Relaxed),
            errors: shared.stats.errors.lock().expect("errors lock").clone(),
            device_reports: devices
                .iter()
                .map(|device| DeviceReport {
                    index: device.index,
                    mac: device.mac_colon(),
                    device_id: device.device_id.as_deref().map(str::to_string),
                    protocol: device.protocol.as_str(),
                    version: device.version.to_string(),
                    state: device.state.as_str(),
                    release_id: device.release_id.as_deref().map(str::to_string),
                    target_version: device.target.as_deref().map(str::to_string),
                    silent: device.phase == Phase::Silent,
                    errors: device.errors,
                })
                .collect(),
        }
    }

    /// One line for the end of the run.
    pub fn closing_line(&self) -> String {
        let t = &self.totals;
        let versions: Vec<String> = self.versions.iter().map(|(v, n)| format!("{v}: {n}")).collect();
        format!(
            "updraft simulate: {} devices in {:.1} s: {} succeeded, {} failed, {} offered, {} in progress, {} silent; versions {}; \
             {} requests, {} errors",
            self.devices,
            self.duration_s,
            t.succeeded,
            t.failed,
            t.offered,
            t.downloading + t.installing + t.installed,
            self.silent,
            versions.join(", "),
            self.requests,
            self.errors.values().sum::<u64>(),
        )
    }
}

//! The dashboard's fleet-wide operations: the fleet summary, bulk changes (each device
//! through `update`, the same path as a single change), and the attempts of every device.

use super::*;
use crate::domain::device::{AttemptFilter, FleetAttempt};

/// How many devices one bulk change may touch, at most.
pub const MAX_BULK_DEVICES: usize = 10_000;

/// Devices counted by one value (product, hardware or version); `None`: devices without one.
pub type Buckets = Vec<(Option<String>, u64)>;

/// The fleet (or one product's devices) at a glance.
pub struct FleetSummary {
    pub total: u64,
    pub online: u64,
    pub by_version: Buckets,
    pub by_product: Buckets,
    pub by_hardware: Buckets,
}

/// Counts the fleet (of one product if given) by presence, version, product and hardware in
/// one grouped pass. Buffered presence is flushed first, as for the device listing.
pub async fn summary(core: &Core, product: Option<&str>) -> Result<FleetSummary> {
    flush_presence(core, Some(core.devices.policy.presence_writes_per_sec.saturating_mul(10))).await?;
    let offline_after = chrono::Duration::from_std(core.devices.policy.offline_after).unwrap_or(chrono::Duration::MAX);
    let cutoff = (Utc::now() - offline_after).timestamp_millis();
    let rows = core.store.device_summary(product, cutoff).await?;
    let mut summary = FleetSummary { total: 0, online: 0, by_version: Vec::new(), by_product: Vec::new(), by_hardware: Vec::new() };
    let (mut versions, mut products, mut hardware) = (HashMap::new(), HashMap::new(), HashMap::new());
    for row in rows {
        summary.total += row.devices;
        if row.online {
            summary.online += row.devices;
        }
        *versions.entry(row.version).or_insert(0) += row.devices;
        *products.entry(row.product).or_insert(0) += row.devices;
        *hardware.entry(row.hardware).or_insert(0) += row.devices;
    }
    summary.by_version = sorted_buckets(versions);
    summary.by_product = sorted_buckets(products);
    summary.by_hardware = sorted_buckets(hardware);
    Ok(summary)
}

/// Most devices first, then by value, devices without a value last among equals.
fn sorted_buckets(counts: HashMap<Option<String>, u64>) -> Buckets {
    let mut buckets: Buckets = counts.into_iter().collect();
    buckets.sort_by(|a, b| {
        b.1.cmp(&a.1).then_with(|| match (&a.0, &b.0) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        })
    });
    buckets
}

/// Which devices a bulk change is for.
pub enum BulkSelection {
    /// Ids or MACs (any accepted form), each reported on its own.
    Devices(Vec<String>),
    /// Every device the listing's filter selects (its sort, limit and offset are ignored).
    Filter(DeviceFilter, Option<PresenceFilter>),
}

/// What a bulk change sets on each device.
#[derive(Default)]
pub struct BulkChange {
    pub tags_add: Vec<String>,
    pub tags_remove: Vec<String>,
    /// `Some(Some(v))` pins, `Some(None)` unpins, `None` leaves the pin.
    pub target_version: Option<Option<String>>,
}

/// One device's result: whether it changed, or why it was refused.
pub struct BulkItem {
    /// The device's id, or the text given when it names no device.
    pub device_id: String,
    pub outcome: Result<bool>,
}

/// Applies `change` to each selected device through `update`, the path of a single change
/// (anti-rollback floor included): each device succeeds or fails on its own. At most
/// `MAX_BULK_DEVICES` devices (422 beyond); a device already in the wanted state is not
/// written.
pub async fn bulk_update(core: &Core, selection: BulkSelection, change: BulkChange, actor: &str) -> Result<Vec<BulkItem>> {
    let tags_add = device::check_tags(&change.tags_add)?;
    let tags_remove = change.tags_remove.iter().map(|t| device::check_tag(t)).collect::<Result<Vec<_>>>()?;
    if let Some(Some(version)) = &change.target_version {
        Version::parse(version).map_err(|e| e.in_field("target_version"))?;
    }
    if tags_add.is_empty() && tags_remove.is_empty() && change.target_version.is_none() {
        return Err(Error::invalid("nothing_to_change", "`set` must give at least one of tags_add, tags_remove, target_version"));
    }
    let too_many = |n: usize| {
        Error::unprocessable(
            "too_many_devices",
            format!("a bulk change touches at most {MAX_BULK_DEVICES} devices; this one selects {n}: narrow the filter or split the list"),
        )
    };
    let mut items = Vec::new();
    let mut targets: Vec<Device> = Vec::new();
    let mut seen = HashSet::new();
    match selection {
        BulkSelection::Devices(given) => {
            if given.len() > MAX_BULK_DEVICES {
                return Err(too_many(given.len()));
            }
            for text in given {
                match find(core, &text).await {
                    Ok(device) => {
                        if seen.insert(device.id.to_string()) {
                            targets.push(device);
                        }
                    }
                    Err(Error::Internal(e)) => return Err(Error::Internal(e)),
                    Err(e) => items.push((targets.len(), BulkItem { device_id: text, outcome: Err(e) })),
                }
            }
        }
        BulkSelection::Filter(filter, presence) => {
            let filter = DeviceFilter { sort: device::DeviceSort::OldestFirst, limit: MAX_BULK_DEVICES as u32, offset: 0, ..filter };
            let (devices, total) = list_devices(core, filter, presence).await?;
            if total > MAX_BULK_DEVICES as u64 {
                return Err(too_many(total as usize));
            }
            targets = devices;
        }
    }
    let mut results: Vec<BulkItem> = Vec::with_capacity(targets.len() + items.len());
    let mut refused = items.into_iter().peekable();
    for (index, device) in targets.into_iter().enumerate() {
        while refused.peek().is_some_and(|(at, _)| *at == index) {
            results.push(refused.next().expect("peeked").1);
        }
        let outcome = match apply(core, &device, &tags_add, &tags_remove, &change.target_version, actor).await {
            Err(Error::Internal(e)) => return Err(Error::Internal(e)),
            outcome => outcome,
        };
        results.push(BulkItem { device_id: device.id.to_string(), outcome });
    }
    results.extend(refused.map(|(_, item)| item));
    Ok(results)
}

/// One device of a bulk change: true when it was written.
async fn apply(
    core: &Core,
    device: &Device,
    tags_add: &[String],
    tags_remove: &[String],
    target_version: &Option<Option<String>>,
    actor: &str,
) -> Result<bool> {
    let mut patch = DevicePatch::default();
    if !tags_add.is_empty() || !tags_remove.is_empty() {
        let wanted: Vec<String> = device.tags.iter().chain(tags_add).filter(|t| !tags_remove.contains(t)).cloned().collect::<Vec<_>>();
        let wanted = device::check_tags(&wanted)?;
        let mut current = device.tags.clone();
        current.sort();
        if wanted != current {
            patch.tags = Some(wanted);
        }
    }
    if let Some(pin) = target_version
        && *pin != device.target_version
    {
        patch.target_version = Some(pin.clone());
    }
    if patch.tags.is_none() && patch.target_version.is_none() {
        return Ok(false);
    }
    update(core, &device.id, patch, actor).await?;
    Ok(true)
}

/// Update attempts across the fleet, most recently changed first, and how many match.
pub async fn fleet_updates(core: &Core, filter: &AttemptFilter) -> Result<(Vec<FleetAttempt>, u64)> {
    core.store.list_fleet_attempts(filter).await
}

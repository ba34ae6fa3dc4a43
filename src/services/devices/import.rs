//! Importing many devices at once (CSV or JSON rows), each row on its own.

use super::*;

pub struct ImportOutcome {
    pub created: Vec<Device>,
    pub errors: Vec<(usize, String, String)>,
}

/// Registers many devices; each row succeeds or fails on its own.
pub async fn import(core: &Core, rows: Vec<NewDeviceRequest>, actor: &str) -> Result<ImportOutcome> {
    if rows.len() > 10_000 {
        return Err(Error::invalid("too_many_rows", "at most 10000 devices per import"));
    }
    let mut outcome = ImportOutcome { created: Vec::new(), errors: Vec::new() };
    let mut seen = HashSet::new();
    for (index, row) in rows.into_iter().enumerate() {
        if let Some(Ok(mac)) = row.mac.as_deref().map(Mac::parse)
            && !seen.insert(DeviceKey::Mac(mac))
        {
            outcome.errors.push((index, "duplicate_mac".into(), format!("{mac} appears more than once in the import")));
            continue;
        }
        if let Some(Ok(uid)) = row.uid.as_deref().map(DeviceUid::parse)
            && !seen.insert(DeviceKey::Uid(uid.clone()))
        {
            outcome.errors.push((index, "duplicate_uid".into(), format!("{uid} appears more than once in the import")));
            continue;
        }
        match register(core, row, actor).await {
            Ok(device) => outcome.created.push(device),
            Err(Error::Internal(e)) => return Err(Error::Internal(e)),
            Err(e) => outcome.errors.push((index, e.code().to_string(), e.to_string())),
        }
    }
    Ok(outcome)
}

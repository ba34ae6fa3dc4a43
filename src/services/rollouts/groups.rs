//! Device groups: named, explicit lists of devices a rollout can target.

use super::*;

pub(super) fn check_group_name(name: &str) -> Result<String> {
    let name = device::check_text("name", "invalid_name", name, 128)?;
    if name.is_empty() {
        return Err(Error::invalid("invalid_name", "a group needs a name"));
    }
    Ok(name)
}

/// Device ids for ids or MACs; unknown ones are refused.
pub(super) async fn resolve_devices(core: &Core, ids_or_macs: &[String]) -> Result<Vec<DeviceId>> {
    if ids_or_macs.len() > 100_000 {
        return Err(Error::invalid("too_many_devices", "at most 100000 devices per request"));
    }
    let mut ids = Vec::with_capacity(ids_or_macs.len());
    for id in ids_or_macs {
        let device = devices::find(core, id).await.map_err(|e| match e {
            Error::NotFound { .. } => Error::unprocessable("unknown_device", format!("device `{id}` is not registered")),
            other => other,
        })?;
        ids.push(device.id);
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Every group, by name, with its size.
pub async fn list_groups(core: &Core) -> Result<Vec<Group>> {
    core.store.list_groups().await
}

pub async fn create_group(core: &Core, name: &str, devices: &[String]) -> Result<Group> {
    let name = check_group_name(name)?;
    let ids = resolve_devices(core, devices).await?;
    let id = GroupId::new();
    core.store.insert_group(&id, &name, &ids).await?;
    refresh(core, true).await?;
    core.store.find_group(&id).await?.ok_or_else(|| Error::Internal(anyhow::anyhow!("group vanished after insert")))
}

pub async fn change_group(core: &Core, id: &GroupId, name: Option<&str>, add: &[String], remove: &[String]) -> Result<Group> {
    let name = name.map(check_group_name).transpose()?;
    let add = resolve_devices(core, add).await?;
    // Removing needs no resolution beyond MACs: unknown ids are simply not members.
    let mut remove_ids = Vec::new();
    for id_or_mac in remove {
        match devices::find(core, id_or_mac).await {
            Ok(device) => remove_ids.push(device.id),
            Err(Error::NotFound { .. }) => remove_ids.push(DeviceId::from(id_or_mac)),
            Err(e) => return Err(e),
        }
    }
    if !core.store.change_group(id, name.as_deref(), &add, &remove_ids).await? {
        return Err(Error::not_found("group", id.as_str()));
    }
    refresh(core, true).await?;
    core.store.find_group(id).await?.ok_or_else(|| Error::not_found("group", id.as_str()))
}

pub async fn find_group(core: &Core, id: &GroupId) -> Result<(Group, Vec<DeviceId>)> {
    let group = core.store.find_group(id).await?.ok_or_else(|| Error::not_found("group", id.as_str()))?;
    let members = core.store.group_members(id).await?;
    Ok((group, members))
}

pub async fn delete_group(core: &Core, id: &GroupId) -> Result<()> {
    if !core.store.delete_group(id).await? {
        return Err(Error::not_found("group", id.as_str()));
    }
    refresh(core, true).await
}

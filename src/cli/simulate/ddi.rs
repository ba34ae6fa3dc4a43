//! hawkBit DDI (docs/CLIENT.md, "hawkBit DDI"), as SWUpdate's suricatta speaks it with a
//! target token: poll `/{tenant}/controller/v1/{controllerId}`, send the attributes when
//! `configData` asks, read `deploymentBase`, download the artifact with the same
//! `Authorization`, give feedback (`download`, `downloaded`, `proceeding`), reboot, and
//! confirm the action `closed` with `success` (or `failure` after a boot failure).

use serde_json::{Value, json};

use super::fleet::{Device, Next, Shared, UpdateState};
use super::update::{self, Offer, Via};
use super::wire::{self, JsonBody, WireError};

pub async fn wake(shared: &Shared, device: &mut Device) -> Next {
    if !wire::ensure_provisioned(shared, device).await {
        return Next::After(device.poll_wait(shared));
    }
    let controller = format!("{}/{}/controller/v1/{}", shared.plan.base, shared.plan.ddi_tenant, device.mac_hyphen());
    if let Some(boots) = update::reboot(shared, device) {
        // SWUpdate confirms the action after the reboot (`-c 2` success, `-c 3` failure).
        let state = if boots { UpdateState::Succeeded } else { UpdateState::Failed };
        let message = if boots { "booted the new image" } else { "booted back into the previous image" };
        let action = device.release_id.as_deref().unwrap_or_default().to_string();
        let mut via = Via::Ddi { feedback: format!("{controller}/deploymentBase/{action}/feedback") };
        via.report(shared, device, state, Some(message)).await;
    }
    let poll = match get(shared, device, &controller).await {
        Ok(poll) => poll,
        Err(e) => {
            wire::failed(shared, device, &e);
            return Next::After(device.poll_wait(shared));
        }
    };
    if let Some(sleep) = poll["config"]["polling"]["sleep"].as_str().and_then(sleep_seconds) {
        device.poll_s = sleep;
    }
    let links = &poll["_links"];
    if links.get("configData").is_some() {
        let attributes = json!({"mode": "merge", "data": {"board": shared.plan.hardware, "hwRevision": "1.0"}});
        let request = authorized(shared, device, shared.http.put(format!("{controller}/configData"))).json_body(&attributes);
        if let Err(e) = wire::send(shared, request).await.map(drop) {
            wire::failed(shared, device, &e);
        }
    }
    if let Some(cancel) = links["cancelAction"]["href"].as_str() {
        return cancel_action(shared, device, cancel).await;
    }
    let Some(deployment) = links["deploymentBase"]["href"].as_str() else {
        return Next::After(device.poll_wait(shared));
    };
    let deployment = match get(shared, device, deployment).await {
        Ok(deployment) => deployment,
        Err(e) => {
            wire::failed(shared, device, &e);
            return Next::After(device.poll_wait(shared));
        }
    };
    let Some((action, offer)) = offer_of(device, &deployment) else {
        shared.stats.error("ddi_deployment");
        return Next::After(device.poll_wait(shared));
    };
    if offer.version == *device.version {
        return Next::After(device.poll_wait(shared));
    }
    if device.release_id.as_deref() != Some(action.as_str()) || device.state.is_final() {
        device.offered(shared, Some(&action), &offer.version);
    }
    let mut via = Via::Ddi { feedback: format!("{controller}/deploymentBase/{action}/feedback") };
    update::apply(shared, device, &offer, &mut via).await
}

fn authorized(shared: &Shared, device: &Device, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let _ = shared;
    request.header(reqwest::header::AUTHORIZATION, format!("TargetToken {}", device.token.as_deref().unwrap_or_default()))
}

async fn get(shared: &Shared, device: &Device, url: &str) -> Result<Value, WireError> {
    let request = authorized(shared, device, shared.http.get(url));
    wire::json_answer(wire::send(shared, request).await?).await.map(|(_, body)| body)
}

/// The action id and the first artifact of the first chunk.
fn offer_of(device: &Device, deployment: &Value) -> Option<(String, Offer)> {
    let action = deployment["id"].as_str()?.to_string();
    let chunk = &deployment["deployment"]["chunks"][0];
    let artifact = &chunk["artifacts"][0];
    let url = artifact["_links"]["download-http"]["href"].as_str().or_else(|| artifact["_links"]["download"]["href"].as_str())?;
    let offer = Offer {
        version: chunk["version"].as_str()?.to_string(),
        url: url.to_string(),
        size: artifact["size"].as_u64(),
        sha256: artifact["hashes"]["sha256"].as_str().map(str::to_string),
        md5: artifact["hashes"]["md5"].as_str().map(str::to_string),
        release_id: Some(action.clone()),
        authorization: Some(format!("TargetToken {}", device.token.as_deref().unwrap_or_default())),
    };
    Some((action, offer))
}

/// The server withdrew the action: confirm the cancellation.
async fn cancel_action(shared: &Shared, device: &mut Device, href: &str) -> Next {
    let action = href.rsplit('/').next().unwrap_or_default().to_string();
    let body = json!({"id": action, "status": {"execution": "closed", "result": {"finished": "success"}}});
    let request = authorized(shared, device, shared.http.post(format!("{href}/feedback"))).json_body(&body);
    match wire::send(shared, request).await {
        Ok(response) if response.status().is_success() => {
            if device.release_id.as_deref() == Some(action.as_str()) {
                device.set_state(shared, UpdateState::Cancelled);
            }
        }
        Ok(response) => shared.stats.error(format!("http_{}", response.status().as_u16())),
        Err(e) => wire::failed(shared, device, &e),
    }
    Next::After(device.poll_wait(shared))
}

/// `HH:MM:SS` in seconds.
fn sleep_seconds(text: &str) -> Option<u32> {
    let parts: Vec<u32> = text.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    match parts[..] {
        [hours, minutes, seconds] => Some(hours * 3600 + minutes * 60 + seconds),
        _ => None,
    }
}

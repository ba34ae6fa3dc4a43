//! From domain types to the registry API's wire types.

use super::*;

pub fn device_view(state: &AppState, device: &Device) -> DeviceView {
    let runtime = &state.core.devices;
    DeviceView {
        id: device.id.to_string(),
        mac: device.mac.map(|m| m.canonical()),
        uid: device.uid.as_ref().map(ToString::to_string),
        name: device.name.clone(),
        product: device.product.as_ref().map(ToString::to_string),
        hardware: device.hardware.as_ref().map(ToString::to_string),
        channel: device.channel.to_string(),
        version: device.version.clone(),
        target_version: device.target_version.clone(),
        tags: device.tags.clone(),
        attributes: device.attributes.clone(),
        metadata: device.metadata.clone(),
        owner: device.owner.clone(),
        status: if runtime.is_online(device) { "online" } else { "offline" },
        last_seen: runtime.last_seen(device).map(timestamp),
        ip: runtime.ip(device),
        setup_status: device.setup_status.as_ref().map(|s| SetupStatusView {
            status_code: s.code,
            title: s.title.clone(),
            description: s.description.clone(),
            at: timestamp(s.at),
        }),
        has_token: device.has_token,
        no_update: runtime
            .no_update(&device.id)
            .and_then(|reason| reason.remedy().map(|remedy| NoUpdateView { reason: reason.as_str(), remedy })),
        reprovision_until: device.reprovision_until.filter(|until| *until > Utc::now()).map(timestamp),
        created_at: timestamp(device.created_at),
        updated_at: timestamp(device.updated_at),
    }
}

pub fn attempt_view(attempt: &UpdateAttempt) -> AttemptView {
    AttemptView {
        id: attempt.id.to_string(),
        release_id: attempt.release_id.to_string(),
        artifact_id: attempt.artifact_id.to_string(),
        from_version: attempt.from_version.clone(),
        to_version: attempt.to_version.clone(),
        state: attempt.state.as_str(),
        progress: attempt.progress,
        message: attempt.message.clone(),
        current: attempt.current,
        action_id: attempt.action_id,
        created_at: timestamp(attempt.created_at),
        updated_at: timestamp(attempt.updated_at),
        events: attempt
            .events
            .iter()
            .map(|e| AttemptEventView { state: e.state.as_str(), progress: e.progress, message: e.message.clone(), at: timestamp(e.at) })
            .collect(),
    }
}

pub(super) fn product_view(settings: &service::ProductSettings) -> ProductView {
    let product = &settings.product;
    ProductView {
        min_version: settings.min_version.clone(),
        name: product.name.to_string(),
        provisioning: product.provisioning.as_str(),
        provision_key: product.provision_key.clone(),
        has_provision_secret: product.provision_secret_hash.is_some(),
        poll_interval_s: product.poll_interval_s,
        hardware: product.hardware.iter().map(ToString::to_string).collect(),
        public_secrets: product.public_secrets,
        configured: settings.configured,
        has_ddi_gateway_token: settings.has_ddi_gateway_token,
    }
}

pub(super) fn setup_view(event: &SetupEvent) -> SetupStatusView {
    SetupStatusView { status_code: event.code, title: event.title.clone(), description: event.description.clone(), at: timestamp(event.at) }
}

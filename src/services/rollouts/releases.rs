//! Releases: the builds of a version that go out only through rollouts.

use super::*;

pub struct NewRelease {
    pub product: String,
    pub version: String,
    pub channel: Option<String>,
    pub notes: Option<String>,
    pub artifact_ids: Vec<String>,
}

/// Creates a release from uploaded builds of one product and one version. From now on its
/// builds are offered only through its rollouts.
pub async fn create_release(core: &Core, new: NewRelease) -> Result<Release> {
    let product = ProductName::parse(&new.product)?;
    let version = Version::parse(&new.version)?;
    let channel = Channel::parse(new.channel.as_deref().unwrap_or(Channel::DEFAULT))?;
    let notes = new.notes.unwrap_or_default();
    if notes.len() > crate::domain::firmware::MAX_NOTES_LEN {
        return Err(Error::invalid("invalid_notes", "notes must be at most 16 KiB"));
    }
    if new.artifact_ids.is_empty() || new.artifact_ids.len() > 64 {
        return Err(Error::invalid("invalid_artifacts", "a release has 1 to 64 builds (`artifact_ids`)"));
    }
    let mut hardware_seen = HashSet::new();
    let mut artifact_ids = Vec::new();
    for id in &new.artifact_ids {
        let artifact = core
            .store
            .find_artifact(&ArtifactId::from(id))
            .await?
            .ok_or_else(|| Error::unprocessable("unknown_artifact", format!("build `{id}` does not exist")))?;
        if artifact.product != product {
            return Err(Error::unprocessable(
                "artifact_mismatch",
                format!("build `{id}` is of product `{}`, not `{product}`", artifact.product),
            ));
        }
        if artifact.version_key != version {
            return Err(Error::unprocessable("artifact_mismatch", format!("build `{id}` is version {}, not {version}", artifact.version)));
        }
        for hardware in &artifact.hardware {
            if !hardware_seen.insert(hardware.clone()) {
                return Err(Error::unprocessable("artifact_mismatch", format!("two builds of the release are for hardware `{hardware}`")));
            }
        }
        if !artifact_ids.contains(&artifact.id) {
            artifact_ids.push(artifact.id);
        }
    }
    let release = Release {
        id: ReleaseId::new(),
        product,
        version: new.version.trim().to_string(),
        version_key: version,
        channel,
        notes,
        artifact_ids,
        created_at: Utc::now(),
    };
    core.store.insert_release(&release).await?;
    refresh(core, true).await?;
    core.events.publish(Event::ReleaseCreated {
        release_id: release.id.to_string(),
        product: release.product.to_string(),
        version: release.version.to_string(),
    });
    Ok(release)
}

/// Releases (of one product, if given), newest first (at most 500).
pub async fn list_releases(core: &Core, product: Option<&str>) -> Result<Vec<Release>> {
    core.store.list_releases(product).await
}

pub async fn find_release(core: &Core, id: &ReleaseId) -> Result<Release> {
    core.store.find_release(id).await?.ok_or_else(|| Error::not_found("release", id))
}

pub async fn delete_release(core: &Core, id: &ReleaseId) -> Result<()> {
    if !core.store.delete_release(id).await? {
        return Err(Error::not_found("release", id));
    }
    refresh(core, true).await
}

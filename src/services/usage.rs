//! Build usage: which releases and rollouts ship a firmware build, and how many devices run
//! it, are pinned to it, or are being offered it. A device runs a build when it is of the
//! build's product, reports the build's version (compared as versions: `1.02` is `1.2.0`)
//! and, when the build names hardware, has one of those.

use std::collections::HashMap;

use super::Core;
use crate::domain::firmware::Artifact;
use crate::domain::rollout::{Release, Rollout};
use crate::domain::version::Version;
use crate::domain::{ArtifactId, Result};
use crate::storage::{VersionColumn, VersionCount};

/// The usage counts shown next to each build of a list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    pub releases: u64,
    pub devices_running: u64,
}

/// Everything that uses one build.
pub struct ArtifactUsage {
    pub releases: Vec<Release>,
    pub rollouts: Vec<Rollout>,
    pub devices_running: u64,
    pub devices_pinned: u64,
    pub devices_offered: u64,
}

/// The usage counts of each of `artifacts`, in their order: two grouped queries for the
/// whole list, whatever its length.
pub async fn usage_counts(core: &Core, artifacts: &[Artifact]) -> Result<Vec<UsageCounts>> {
    let mut products: Vec<&str> = artifacts.iter().map(|a| a.product.as_str()).collect();
    products.sort_unstable();
    products.dedup();
    let running = core.store.device_version_counts(&products, VersionColumn::Running).await?;
    let ids: Vec<&ArtifactId> = artifacts.iter().map(|a| &a.id).collect();
    let released: HashMap<ArtifactId, u64> =
        core.store.releases_of_artifacts(&ids).await?.into_iter().fold(HashMap::new(), |mut map, (artifact, _)| {
            *map.entry(artifact).or_insert(0) += 1;
            map
        });
    let parsed = parse_versions(&running);
    Ok(artifacts
        .iter()
        .map(|a| UsageCounts { releases: released.get(&a.id).copied().unwrap_or(0), devices_running: devices_of(a, &running, &parsed) })
        .collect())
}

/// Everything that uses `artifact`.
pub async fn artifact_usage(core: &Core, artifact: &Artifact) -> Result<ArtifactUsage> {
    let products = [artifact.product.as_str()];
    let running = core.store.device_version_counts(&products, VersionColumn::Running).await?;
    let pinned = core.store.device_version_counts(&products, VersionColumn::Pinned).await?;
    let mut releases = Vec::new();
    let mut rollouts = Vec::new();
    for (_, release_id) in core.store.releases_of_artifacts(&[&artifact.id]).await? {
        if let Some(release) = core.store.find_release(&release_id).await? {
            rollouts.extend(core.store.rollouts_of_release(&release.id).await?);
            releases.push(release);
        }
    }
    Ok(ArtifactUsage {
        releases,
        rollouts,
        devices_running: devices_of(artifact, &running, &parse_versions(&running)),
        devices_pinned: devices_of(artifact, &pinned, &parse_versions(&pinned)),
        devices_offered: core.store.devices_offered_artifact(&artifact.id).await?,
    })
}

fn parse_versions(counts: &[VersionCount]) -> Vec<Option<Version>> {
    counts.iter().map(|c| Version::parse(&c.version).ok()).collect()
}

/// Devices of `counts` that match the build: its product, its version, one of its hardware.
fn devices_of(artifact: &Artifact, counts: &[VersionCount], versions: &[Option<Version>]) -> u64 {
    counts
        .iter()
        .zip(versions)
        .filter(|(count, version)| {
            count.product == artifact.product.as_str()
                && version.as_ref() == Some(&artifact.version_key)
                && (artifact.hardware.is_empty()
                    || count.hardware.as_deref().is_some_and(|h| artifact.hardware.iter().any(|a| a.as_str() == h)))
        })
        .map(|(count, _)| count.devices)
        .sum()
}

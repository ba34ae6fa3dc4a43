// Shapes of the build-usage routes (issue 15, h15-api: plan "Final shapes" 6). They are not
// in openapi.d.ts yet; once they are, use `Schema<'ArtifactUsage'>` and `Schema<'UsageCounts'>`.
import type { Schema } from '../../lib/api';

export type Artifact = Schema<'ArtifactView'>;
export type ImageFacts = Schema<'ImageView'>;

/** `usage` of `GET /api/v1/firmware` items (absent on upload and PATCH answers). */
export interface UsageCounts {
  releases: number;
  devices_running: number;
}

export type ArtifactItem = Artifact & { usage?: UsageCounts | null };

export interface ArtifactPage {
  items: ArtifactItem[];
  total: number;
  limit: number;
  offset: number;
}

export interface UsageRelease {
  id: string;
  product: string;
  version: string;
  channel: string;
}

export interface UsageRollout {
  id: string;
  name: string;
  state: string;
  release_id: string;
}

/** `GET /api/v1/firmware/{id}/usage`. */
export interface ArtifactUsage {
  releases: UsageRelease[];
  rollouts: UsageRollout[];
  devices_running: number;
  devices_pinned: number;
  devices_offered: number;
}

export type LatestView = Schema<'LatestView'>;

// Shapes of the rollout routes. The new ones of h15-api (preview, plan "Final shapes" 2) are
// not in openapi.d.ts yet; once they are, use `Schema<'RolloutPreview'>` etc.
import type { Schema } from '../../lib/api';

export type Release = Schema<'ReleaseView'>;
export type Rollout = Schema<'RolloutView'>;
export type Counts = Schema<'CountsView'>;
export type Stage = Schema<'StageView'>;
export type Transition = Schema<'TransitionView'>;
export type CreateRolloutBody = Schema<'CreateRolloutBody'>;
export type TargetBody = Schema<'TargetBody'>;
export type StageBody = Schema<'StageBody'>;
export type Group = Schema<'GroupView'>;

/** An overlap with another rollout (`release_id` is new, h15-api). */
export type Overlap = Schema<'OverlapView'> & { release_id?: string };

export interface PreviewStage {
  number: number;
  percent?: number | null;
  count?: number | null;
  /** Devices this stage adds (not cumulative). */
  devices: number;
}

/** `POST /api/v1/rollouts/preview`. */
export interface RolloutPreview {
  target_size: number;
  stages: PreviewStage[];
  overlaps: Overlap[];
}

export const STATES = ['draft', 'running', 'paused', 'halted', 'completed', 'cancelled', 'rolled_back'] as const;

export function stateClass(state: string): string {
  switch (state) {
    case 'running':
    case 'completed':
      return 'ok';
    case 'paused':
    case 'draft':
      return 'warn';
    case 'halted':
    case 'cancelled':
    case 'rolled_back':
      return 'bad';
    default:
      return '';
  }
}

export function stateLabel(state: string): string {
  return state.replace('_', ' ');
}

/** Devices offered the release and not finished (offered, downloading, installing, installed). */
export function inProgress(c: Counts): number {
  return c.offered + c.downloading + c.installing + c.installed;
}

export function failedOf(c: Counts): number {
  return c.failed + c.timed_out;
}

export function stageShare(s: { percent?: number | null; count?: number | null }): string {
  if (s.count != null) return `${s.count} ${s.count === 1 ? 'device' : 'devices'}`;
  if (s.percent != null) return `${s.percent}%`;
  return '—';
}

// Shapes of the routes h15-api adds for the overview (the plan's "Final shapes"); they are not
// in docs/openapi.json (so not in openapi.d.ts) yet. Replace with `Schema<'FleetSummary'>`,
// `Schema<'UpdatePage'>` once the document has them.
import type { Schema } from '../../lib/api';

/** One count of `GET /api/v1/devices/summary`; `key: null` = never reported / not set. */
export interface SummaryBucket {
  key: string | null;
  count: number;
}

/** `GET /api/v1/devices/summary` [FleetSummary]. */
export interface FleetSummary {
  total: number;
  online: number;
  offline: number;
  by_version: SummaryBucket[];
  by_product: SummaryBucket[];
  by_hardware: SummaryBucket[];
}

/** An item of `GET /api/v1/updates` [UpdateItem]: an update attempt and its device. */
export type UpdateItem = Schema<'AttemptView'> & {
  device_id: string;
  device_name: string;
  mac: string;
  product: string | null;
};

/** `GET /api/v1/updates` [UpdatePage]. */
export interface UpdatePage {
  items: UpdateItem[];
  total: number;
  limit: number;
  offset: number;
}

export type RolloutView = Schema<'RolloutView'>;

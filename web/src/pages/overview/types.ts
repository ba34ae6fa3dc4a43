// The overview's shapes, from the OpenAPI document (h15-api's dashboard routes).
import type { Schema } from '../../lib/api';

/** One count of `GET /api/v1/devices/summary`; `key: null` = never reported / not set. */
export type SummaryBucket = Schema<'SummaryBucket'>;
/** `GET /api/v1/devices/summary`. */
export type FleetSummary = Schema<'FleetSummary'>;
/** An item of `GET /api/v1/updates`: an update attempt and its device. */
export type UpdateItem = Schema<'UpdateItem'>;
/** `GET /api/v1/updates`. */
export type UpdatePage = Schema<'UpdatePage'>;
export type RolloutView = Schema<'RolloutView'>;

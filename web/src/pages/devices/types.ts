// Shapes of the devices pages that web/src/lib/openapi.d.ts does not have yet (routes of
// h15-api: `POST /api/v1/devices/bulk`), and of the live stream's messages. Replace with
// `Schema<'BulkDevicesBody'>` etc. once docs/openapi.json carries them.
import type { Schema } from '../../lib/api';

export type Device = Schema<'DeviceView'>;
export type DevicePage = Schema<'DevicePage'>;

/** The list filters, as `GET /api/v1/devices` and the bulk route's `filter` take them. */
export interface DeviceFilter {
  product?: string;
  hardware?: string;
  version?: string;
  tag?: string;
  status?: string;
  owner?: string;
  q?: string;
  last_seen_before?: string;
  last_seen_after?: string;
}

export interface BulkSet {
  tags_add?: string[];
  tags_remove?: string[];
  /** Absent: unchanged; null: unpin. */
  target_version?: string | null;
}

export type BulkBody = ({ devices: string[] } | { filter: DeviceFilter }) & { set: BulkSet };

export interface BulkItem {
  device_id: string;
  ok: boolean;
  changed: boolean;
  code?: string;
  message?: string;
}

export interface BulkResult {
  matched: number;
  changed: number;
  results: BulkItem[];
}

/** One message of `GET /api/v1/events`: `{"type", "device_id", "at", "data"}`. */
export interface StreamMessage {
  type: string;
  device_id?: string | null;
  at?: string;
  data?: Record<string, unknown>;
}

/** `GET /api/v1/devices/summary` (h15-api's FleetSummary): used for the filters' suggestions. */
export interface SummaryBucket {
  key: string | null;
  count: number;
}
export interface FleetSummary {
  total: number;
  online: number;
  offline: number;
  by_version: SummaryBucket[];
  by_product: SummaryBucket[];
  by_hardware: SummaryBucket[];
}

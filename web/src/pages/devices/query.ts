// The devices list's state lives in the address bar: filters, search, sort and page. These
// helpers read it from `route.query` and turn it into the list's and the bulk route's query.
import type { DeviceFilter } from './types';

export const FILTER_KEYS = ['product', 'hardware', 'version', 'tag', 'status', 'owner', 'q', 'last_seen_before', 'last_seen_after'] as const;
export type FilterKey = (typeof FILTER_KEYS)[number];

/** The sorts `GET /api/v1/devices` supports, with what the page calls them. */
export const SORTS: [string, string][] = [
  ['-created_at', 'Newest first'],
  ['created_at', 'Oldest first'],
  ['-last_seen', 'Last seen'],
  ['name', 'Name'],
  ['mac', 'MAC address'],
];
export const DEFAULT_SORT = '-created_at';
export const PAGE_SIZES = [25, 50, 100, 200];
export const DEFAULT_LIMIT = 50;

export interface ListQuery {
  filter: DeviceFilter;
  sort: string;
  limit: number;
  offset: number;
}

function int(text: string | null, fallback: number, min: number, max: number): number {
  if (text === null || !/^\d+$/.test(text)) return fallback;
  const n = Number(text);
  return Math.min(max, Math.max(min, n));
}

export function readQuery(params: URLSearchParams): ListQuery {
  const filter: DeviceFilter = {};
  for (const key of FILTER_KEYS) {
    const value = params.get(key)?.trim();
    if (value) filter[key] = value;
  }
  const sort = params.get('sort') ?? DEFAULT_SORT;
  return {
    filter,
    sort: SORTS.some(([s]) => s === sort) ? sort : DEFAULT_SORT,
    limit: int(params.get('limit'), DEFAULT_LIMIT, 1, 500),
    offset: int(params.get('offset'), 0, 0, 2 ** 40),
  };
}

/** True when any filter (search included) is set. */
export function filtered(filter: DeviceFilter): boolean {
  return Object.keys(filter).length > 0;
}

/** An RFC 3339 time as the value of an `<input type="datetime-local">` (local time). */
export function toLocalInput(iso: string | undefined): string {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** The value of an `<input type="datetime-local">` as RFC 3339 (UTC), or '' when empty. */
export function fromLocalInput(value: string): string {
  if (!value) return '';
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

/** What a filter selects, in words: "product lamp, tag eu, online". */
export function describeFilter(filter: DeviceFilter): string {
  const parts: string[] = [];
  if (filter.q) parts.push(`matching “${filter.q}”`);
  if (filter.product) parts.push(`product ${filter.product}`);
  if (filter.hardware) parts.push(`hardware ${filter.hardware}`);
  if (filter.version) parts.push(`version ${filter.version}`);
  if (filter.tag) parts.push(`tag ${filter.tag}`);
  if (filter.status) parts.push(filter.status);
  if (filter.owner) parts.push(`owner ${filter.owner}`);
  if (filter.last_seen_after) parts.push(`seen after ${new Date(filter.last_seen_after).toLocaleString()}`);
  if (filter.last_seen_before) parts.push(`seen before ${new Date(filter.last_seen_before).toLocaleString()}`);
  return parts.length ? parts.join(', ') : 'every device';
}

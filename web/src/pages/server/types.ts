// `GET /api/v1/server` [ServerInfo] (h15-api; not in docs/openapi.json, so not in
// openapi.d.ts, yet): replace with `Schema<'ServerInfo'>` once the document has it.
export interface ServerInfo {
  version: string;
  database: 'sqlite' | 'postgres' | string;
  blob_store: 'local' | 's3' | string;
  mqtt: 'embedded' | 'external' | 'off' | string;
  uptime_s: number;
  started_at: string;
  public_url: string | null;
  oidc: boolean;
  devices: number;
}

/** `GET /api/ready` (200 ready, 503 with the same body saying what does not answer). */
export interface Readiness {
  status: string;
  database: string;
  blob_store: string;
}

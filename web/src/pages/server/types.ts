import type { Schema } from '../../lib/api';

/** `GET /api/v1/server`. */
export type ServerInfo = Schema<'ServerInfo'>;
/** `GET /api/ready` (200 ready, 503 with the same body saying what does not answer). */
export type Readiness = Schema<'Readiness'>;

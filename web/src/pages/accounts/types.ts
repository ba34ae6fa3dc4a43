import type { Schema } from '../../lib/api';

export type Role = Schema<'Role'>;
export const ROLES: Role[] = ['viewer', 'operator', 'provisioner', 'admin'];
export type UserView = Schema<'UserView'>;
export type KeyView = Schema<'KeyView'>;
export type KeyCreated = Schema<'KeyCreated'>;
export type SessionInfo = Schema<'SessionInfo'>;
export type AuditRecord = Schema<'AuditRecordView'>;
export type AuditPage = Schema<'AuditPage'>;

/**
 * `GET /api/v1/api-keys` answers `{"items": [KeyView]}`. The OpenAPI document says `KeyList`
 * there, but two Rust structs share that name (accounts' and assets' public keys), so the
 * document's `KeyList` is the public signing keys' `{"keys": [PublicKey]}`: declared here
 * until the Rust side renames one of them.
 */
export interface ApiKeyList {
  items: KeyView[];
}

/** A random password (18 characters from a 57-letter alphabet without look-alikes). */
export function randomPassword(length = 18): string {
  const alphabet = 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789';
  const bytes = new Uint8Array(length);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('');
}

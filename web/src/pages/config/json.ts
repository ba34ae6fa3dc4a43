// JSON helpers of the configuration page: formatting, validating an edited document, and
// counting the masked secrets (`{"$secret": null}`) a document carries.

export function pretty(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

/** A value in one line, for diff cells (a masked secret reads as such). */
export function inline(value: unknown): string {
  if (value === undefined) return '—';
  if (isSecret(value)) return 'secret (masked)';
  const text = JSON.stringify(value);
  return text.length > 160 ? `${text.slice(0, 157)}…` : text;
}

export function isSecret(value: unknown): boolean {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.keys(value).length === 1 && '$secret' in value;
}

/** The JSON pointers of the secrets in a document. */
export function secretPaths(value: unknown, path = ''): string[] {
  if (isSecret(value)) return [path || '/'];
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return [];
  return Object.entries(value).flatMap(([k, v]) => secretPaths(v, `${path}/${k.replaceAll('~', '~0').replaceAll('/', '~1')}`));
}

export type Parsed = { ok: true; value: Record<string, unknown> } | { ok: false; message: string };

/** Parses an edited document: it must be a JSON object. */
export function parseDocument(text: string): Parsed {
  if (!text.trim()) return { ok: false, message: 'The document is empty: a layer is a JSON object, at least {}.' };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return { ok: false, message: `Not valid JSON: ${e instanceof Error ? e.message : String(e)}` };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, message: 'A layer is a JSON object ({…}), not ' + (Array.isArray(value) ? 'an array' : value === null ? 'null' : `a ${typeof value}`) + '.' };
  }
  return { ok: true, value: value as Record<string, unknown> };
}

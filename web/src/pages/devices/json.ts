// Flattening JSON documents (telemetry, configuration) into leaves addressed by JSON pointer,
// the way the server names a configuration value's source (`/wifi/ssid`).

export interface Leaf {
  pointer: string;
  value: unknown;
  /** A configuration secret: the server shows it as `{"$secret": null}` and never its value. */
  secret: boolean;
}

function escape(key: string): string {
  return key.replace(/~/g, '~0').replace(/\//g, '~1');
}

export function isSecret(value: unknown): boolean {
  return (
    typeof value === 'object' && value !== null && !Array.isArray(value) && Object.keys(value).length === 1 && '$secret' in value
  );
}

export function leaves(value: unknown, pointer = ''): Leaf[] {
  if (isSecret(value)) return [{ pointer, value, secret: true }];
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 0) return pointer ? [{ pointer, value, secret: false }] : [];
    return entries.flatMap(([k, v]) => leaves(v, `${pointer}/${escape(k)}`));
  }
  return [{ pointer, value, secret: false }];
}

/** A leaf's value as short text. */
export function show(value: unknown): string {
  if (typeof value === 'string') return value;
  return JSON.stringify(value);
}

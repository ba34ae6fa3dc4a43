// The live event stream (`GET /api/v1/events`, server-sent events with the session cookie).
// One EventSource for the whole page, shared by every subscriber; it reconnects by itself.
export interface LiveEvent {
  /** The SSE event name, e.g. `device.online`. */
  type: string;
  /**
   * The whole SSE message as the server sends it (docs/API.md, "Live events"):
   * `{type, device_id?, at, data}`; the event's own fields are in `data.data`.
   */
  data: any;
}

type Listener = (event: LiveEvent) => void;

const listeners = new Set<Listener>();
let source: EventSource | null = null;

const TYPES = [
  'device.created', 'device.updated', 'device.deleted', 'device.online', 'device.offline', 'device.connected',
  'device.disconnected', 'device.checkin', 'device.telemetry', 'device.update_status', 'device.setup_status',
  'device.paired', 'device.token_issued', 'device.token_revoked', 'product.updated', 'firmware.changed',
  'release.created', 'rollout.created', 'rollout.transition', 'config.changed', 'config.acknowledged',
  'asset.uploaded', 'command.sent', 'command.completed', 'dropped',
];

function open() {
  source = new EventSource('/api/v1/events', { withCredentials: true });
  for (const type of TYPES) {
    source.addEventListener(type, (e) => {
      let data: any = null;
      try {
        data = JSON.parse((e as MessageEvent).data);
      } catch {
        data = (e as MessageEvent).data;
      }
      for (const listener of listeners) listener({ type, data });
    });
  }
}

/** Calls `listener` for every live event until the returned function is called. */
export function subscribe(listener: Listener): () => void {
  listeners.add(listener);
  if (!source) open();
  return () => {
    listeners.delete(listener);
    if (listeners.size === 0 && source) {
      source.close();
      source = null;
    }
  };
}

/** Calls `fn` at most once per `ms` (trailing): for reloading a list on a burst of events. */
export function throttle(fn: () => void, ms: number): () => void {
  let timer: ReturnType<typeof setTimeout> | null = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}

// The one way the dashboard talks to the server. Cookies carry the session; every
// state-changing request sends the CSRF token (the readable `updraft_csrf` cookie) as
// `X-CSRF-Token`. Errors become `ApiError` with the server's `error.code` and `error.message`.
import type { components } from './openapi';

/** A schema of the OpenAPI document, e.g. `Schema<'DeviceView'>`. */
export type Schema<K extends keyof components['schemas']> = components['schemas'][K];

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

type Query = Record<string, string | number | boolean | null | undefined | string[]>;

/** Called on every 401 (the session ended): the app shows the sign-in page. */
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(handler: () => void) {
  onUnauthorized = handler;
}

export function csrfToken(): string {
  const match = document.cookie.match(/(?:^|;\s*)updraft_csrf=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : '';
}

export function withQuery(path: string, query?: Query): string {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null || value === '') continue;
    if (Array.isArray(value)) value.forEach((v) => params.append(key, v));
    else params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

async function errorOf(response: Response): Promise<ApiError> {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body?.error) {
      code = body.error.code ?? code;
      message = body.error.message ?? message;
    }
  } catch {
    // Not JSON (a proxy's page, say): keep the status line.
  }
  return new ApiError(response.status, code, message);
}

async function request<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
  const init: RequestInit = { method, credentials: 'same-origin', headers: { Accept: 'application/json', ...headers } };
  if (method !== 'GET' && method !== 'HEAD') (init.headers as Record<string, string>)['X-CSRF-Token'] = csrfToken();
  if (body !== undefined) {
    (init.headers as Record<string, string>)['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response: Response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the server (${e instanceof Error ? e.message : String(e)})`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && !path.startsWith('/api/v1/session')) onUnauthorized();
    throw error;
  }
  if (response.status === 204) return undefined as T;
  const type = response.headers.get('content-type') ?? '';
  return (type.includes('json') ? await response.json() : await response.text()) as T;
}

export const api = {
  get: <T>(path: string, query?: Query) => request<T>('GET', withQuery(path, query)),
  post: <T>(path: string, body?: unknown, headers?: Record<string, string>) => request<T>('POST', path, body ?? {}, headers),
  put: <T>(path: string, body?: unknown, headers?: Record<string, string>) => request<T>('PUT', path, body, headers),
  patch: <T>(path: string, body?: unknown) => request<T>('PATCH', path, body),
  del: <T = void>(path: string) => request<T>('DELETE', path),
};

export interface UploadProgress {
  /** Bytes sent so far. */
  loaded: number;
  total: number;
  /** `sending` while bytes go out, `verifying` once all are sent and the server checks them. */
  phase: 'sending' | 'verifying';
}

/**
 * A multipart upload with progress (fetch reports none): `onProgress` gets the bytes sent,
 * then `verifying` while the server hashes, parses and stores the file.
 */
export function upload<T>(path: string, form: FormData, onProgress: (p: UploadProgress) => void): { promise: Promise<T>; abort: () => void } {
  const xhr = new XMLHttpRequest();
  const promise = new Promise<T>((resolve, reject) => {
    xhr.open('POST', path);
    xhr.withCredentials = true;
    xhr.setRequestHeader('X-CSRF-Token', csrfToken());
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.upload.onprogress = (e) => onProgress({ loaded: e.loaded, total: e.total, phase: 'sending' });
    xhr.upload.onload = () => onProgress({ loaded: 1, total: 1, phase: 'verifying' });
    xhr.onerror = () => reject(new ApiError(0, 'network', 'the upload was cut off: cannot reach the server'));
    xhr.onabort = () => reject(new ApiError(0, 'aborted', 'the upload was cancelled'));
    xhr.onload = () => {
      let body: any = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body as T);
      else {
        if (xhr.status === 401) onUnauthorized();
        reject(new ApiError(xhr.status, body?.error?.code ?? `http_${xhr.status}`, body?.error?.message ?? `${xhr.status} ${xhr.statusText}`));
      }
    };
    xhr.send(form);
  });
  return { promise, abort: () => xhr.abort() };
}

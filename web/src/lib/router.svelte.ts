// A small history router: `route.path` and `route.query` follow the address bar;
// `navigate()` changes it without a reload; links with `href="/..."` are intercepted in App.
export const route = $state<{ path: string; query: URLSearchParams }>({
  path: location.pathname,
  query: new URLSearchParams(location.search),
});

function sync() {
  route.path = location.pathname;
  route.query = new URLSearchParams(location.search);
}

window.addEventListener('popstate', sync);

export function navigate(to: string, { replace = false } = {}) {
  if (to === location.pathname + location.search) return;
  if (replace) history.replaceState(null, '', to);
  else history.pushState(null, '', to);
  sync();
  window.scrollTo(0, 0);
}

/** Sets query parameters (null or '' removes one) and replaces the history entry. */
export function setQuery(values: Record<string, string | number | null | undefined>) {
  const params = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(values)) {
    if (value === null || value === undefined || value === '') params.delete(key);
    else params.set(key, String(value));
  }
  const text = params.toString();
  navigate(location.pathname + (text ? `?${text}` : ''), { replace: true });
}

/** Matches `pattern` (e.g. `/devices/:id`) against `path`; returns the parameters or null. */
export function match(pattern: string, path: string): Record<string, string> | null {
  const a = pattern.split('/').filter(Boolean);
  const b = path.split('/').filter(Boolean);
  if (a.length !== b.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < a.length; i++) {
    if (a[i].startsWith(':')) params[a[i].slice(1)] = decodeURIComponent(b[i]);
    else if (a[i] !== b[i]) return null;
  }
  return params;
}

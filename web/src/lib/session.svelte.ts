// Who is signed in, and what their role may do (the same table as the server's
// `domain::auth`: every role reads; operator operates; provisioner provisions; admin all).
import { api, ApiError, setUnauthorizedHandler, type Schema } from './api';
import { navigate } from './router.svelte';

export type SessionView = Schema<'SessionView'>;

export const session = $state<{ me: SessionView | null; checked: boolean }>({ me: null, checked: false });

export type Ability = 'operate' | 'provision' | 'admin';

export function can(ability: Ability): boolean {
  const role = session.me?.role;
  if (!role) return false;
  if (role === 'admin') return true;
  if (ability === 'operate') return role === 'operator';
  if (ability === 'provision') return role === 'provisioner';
  return false;
}

export async function refreshSession(): Promise<void> {
  try {
    session.me = await api.get<SessionView>('/api/v1/session');
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 401) throw e;
    session.me = null;
  } finally {
    session.checked = true;
  }
}

export async function signOut(): Promise<void> {
  try {
    await api.del('/api/v1/session');
  } finally {
    session.me = null;
    navigate('/login');
  }
}

setUnauthorizedHandler(() => {
  session.me = null;
  if (location.pathname !== '/login') navigate(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
});

// The JSON API client (SPEC §6) and the login session. The session token
// is sent as a Bearer token (no cookie, so no CSRF exposure) and is also
// the MQTT password over WebSocket.

const KEY = 'tether.session';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  get() {
    try {
      const s = JSON.parse(sessionStorage.getItem(KEY));
      if (s && s.token && (!s.expires_at || new Date(s.expires_at) > new Date())) return s;
    } catch { /* fall through */ }
    return null;
  },
  set(s) { sessionStorage.setItem(KEY, JSON.stringify(s)); },
  clear() { sessionStorage.removeItem(KEY); },
};

// Roles, each including the ones before it.
const RANK = { viewer: 1, operator: 2, admin: 3 };
export function can(role) {
  const s = session.get();
  return !!s && (RANK[s.role] || 0) >= RANK[role];
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(f) { onUnauthorized = f; }

export async function api(method, path, body) {
  const s = session.get();
  const headers = { Accept: 'application/json' };
  if (s) headers.Authorization = 'Bearer ' + s.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch('/api/v1' + path, {
      method, headers, credentials: 'omit', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', 'The server cannot be reached.');
  }
  let data = null;
  const text = await res.text();
  if (text) { try { data = JSON.parse(text); } catch { data = null; } }
  if (!res.ok) {
    const err = data && data.error || {};
    if (res.status === 401 && path !== '/auth/login') onUnauthorized();
    throw new ApiError(res.status, err.code, err.message || `${res.status} ${res.statusText}`);
  }
  return data;
}

export const get = (p) => api('GET', p);
export const post = (p, b = {}) => api('POST', p, b);
export const patch = (p, b) => api('PATCH', p, b);
export const del = (p) => api('DELETE', p);
export const enc = encodeURIComponent;

// login exchanges a name and password for a session; the response names
// the user's role, which decides the controls shown (least privilege if
// it is missing).
export async function login(username, password) {
  const r = await api('POST', '/auth/login', { username, password });
  const s = { token: r.token, expires_at: r.expires_at, username: r.username || username, role: r.role || 'viewer' };
  session.set(s);
  return s;
}

export async function logout() {
  try { await post('/auth/logout'); } catch { /* the session ends here anyway */ }
  session.clear();
}

// allDevices pages through GET /devices (1000 at a time) and calls onPage
// with each page's devices.
export async function allDevices(onPage) {
  let cursor = '';
  do {
    const r = await get('/devices?limit=1000' + (cursor ? '&cursor=' + enc(cursor) : ''));
    onPage(r.devices || []);
    cursor = r.next_cursor || '';
  } while (cursor);
}

// The dashboard's entry point: a hash router over small views. Each view
// is a function (main, params) that draws into main and returns a cleanup
// function, called when the page changes.

import { session, can, logout, setUnauthorizedHandler } from './api.js';
import { live } from './live.js';
import { fleet } from './fleet.js';
import { sys } from './sys.js';
import { loginView } from './login.js';
import { overviewView } from './overview.js';
import { devicesView } from './devices.js';
import { deviceView } from './device.js';
import { registerView } from './admin.js';
import { usersView, tokensView, accountView, auditView } from './accounts.js';
import { securityView } from './security.js';
import { explorerView } from './explorer.js';

const main = document.getElementById('main');
const routes = [
  [/^#\/login$/, loginView, 'login'],
  [/^#?\/?$/, overviewView, 'overview'],
  [/^#\/devices$/, devicesView, 'devices'],
  [/^#\/devices\/([^/]+)$/, deviceView, 'devices'],
  [/^#\/register$/, registerView, 'register', 'admin'],
  [/^#\/users$/, usersView, 'users', 'admin'],
  [/^#\/tokens$/, tokensView, 'tokens'],
  [/^#\/account$/, accountView, 'account'],
  [/^#\/audit$/, auditView, 'audit', 'admin'],
  [/^#\/security$/, securityView, 'security', 'admin'],
  [/^#\/explorer$/, explorerView, 'explorer', 'admin'],
];

let cleanup = null;
let message = '';
let expiry = 0;

// toLogin ends the session (token refused or expired) and shows the login.
export function toLogin(why) {
  message = why || '';
  clearTimeout(expiry);
  live.close();
  fleet.reset();
  sys.reset();
  session.clear();
  if (location.hash !== '#/login') location.hash = '#/login';
  else route();
}

function route() {
  if (cleanup) { try { cleanup(); } catch (e) { console.error(e); } cleanup = null; }
  const hash = location.hash || '#/';
  const s = session.get();
  const top = document.getElementById('top');
  if (!s && hash !== '#/login') { location.hash = '#/login'; return; }
  let found = routes.find(([re]) => re.test(hash));
  if (!found || (found[3] && !can(found[3]))) found = routes[1];
  const [re, view, name] = found;
  top.hidden = name === 'login';
  if (name !== 'login') {
    if (!live.client) {
      live.connect(s);
      // A session ends at its expiry; the next request would be refused.
      const left = new Date(s.expires_at) - Date.now();
      if (left > 0 && left < 2 ** 31) expiry = setTimeout(() => toLogin('Your session has expired; please log in again.'), left);
    }
    fleet.load().catch((e) => console.error('loading the fleet', e));
    sys.start(); // rates accumulate while the user is on other pages
    document.getElementById('who').textContent = s.username + ' · ' + s.role;
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('active', a.dataset.route === name);
      a.hidden = !!a.dataset.role && !can(a.dataset.role);
    }
  }
  const params = (hash.match(re) || []).slice(1).map(decodeURIComponent);
  main.replaceChildren();
  window.scrollTo(0, 0);
  cleanup = view(main, params, { message, toLogin }) || null;
  message = '';
}

const conn = document.getElementById('conn');
const connText = { online: 'Live', connecting: 'Reconnecting…', offline: 'Offline' };
let wasOnline = false;
const connTitle = conn.title;
live.onState((st) => {
  conn.dataset.state = st;
  conn.lastElementChild.textContent = st !== 'online' && live.reason ? 'Not connected' : connText[st];
  conn.title = live.reason || connTitle;
  // Why the page cannot connect, when the server said: under the header.
  let why = document.getElementById('conn-reason');
  if (live.reason && st !== 'online') {
    if (!why) {
      why = document.createElement('p');
      why.id = 'conn-reason';
      why.className = 'notice';
      why.setAttribute('role', 'alert');
      document.getElementById('top').after(why);
    }
    why.textContent = live.reason;
  } else if (why) {
    why.remove();
  }
  // Status changes missed while disconnected (and retained statuses the
  // broker could not queue in one burst) come from the registry.
  if (st === 'online' && wasOnline && fleet.loaded) fleet.load(true).catch(() => {});
  if (st === 'online') wasOnline = true;
  if (st === 'offline' && !live.client) wasOnline = false;
});
live.onRefused = () => toLogin('Your session was refused by the broker; please log in again.');
setUnauthorizedHandler(() => toLogin('Your session has expired; please log in again.'));
document.getElementById('logout').addEventListener('click', async () => {
  await logout();
  toLogin('');
});
window.addEventListener('hashchange', route);
route();

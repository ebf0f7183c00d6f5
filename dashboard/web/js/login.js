// The login page: POST /auth/login, then the overview.

import { h } from './util.js';
import { login } from './api.js';

export function loginView(main, _params, { message }) {
  const err = h('p', { class: 'error', role: 'alert', text: message || '' });
  const user = h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const btn = h('button', { type: 'submit', id: 'login-submit' }, 'Log in');
  const form = h('form', { class: 'panel form', id: 'login-form' },
    h('label', {}, 'User name', user),
    h('label', {}, 'Password', pass),
    err, btn);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    btn.disabled = true;
    err.textContent = '';
    try {
      await login(user.value.trim(), pass.value);
      location.hash = '#/';
    } catch (e) {
      err.textContent = e.status === 401 || e.status === 403 ? 'Wrong user name or password.' : e.message;
      pass.select();
    } finally {
      btn.disabled = false;
    }
  });
  main.append(h('div', { class: 'login' },
    h('div', { class: 'brand' }, h('img', { src: 'favicon.svg', alt: '', width: 32, height: 32 }), 'Tether'),
    form,
    h('p', { class: 'muted small', text: 'The first administrator\'s password is printed once in the server log, or set with TETHER_ADMIN_PASSWORD.' })));
  user.focus();
}

// A viewer reads everything and changes nothing: on every page that writes (devices, device
// detail, firmware, releases, rollouts, a rollout, configuration, provisioning, users) no
// write button is shown and "Users & keys" is not in the navigation; when the viewer tries
// anyway (their own session cookie and CSRF header) the server answers 403, and the new-rollout
// page either hides its submit or shows the server's 403 message.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { espImage, launchBrowser, newPage, signInAs, startServer } from './harness.mjs';

let server;
let browser;
const fleet = {};

// The names of buttons (and links styled as buttons) that change something, on any page.
// Reading actions (filters, sort, paging, copy, refresh, diff, sign out) do not match, nor
// ending one's own session (everyone may: `DELETE /api/v1/sessions/{id}` of their own).
const WRITE =
  /^(new\b|create|add\b|add a|delete|remove|upload|choose files|mark as latest|edit|save|pin\b|pin to|unpin|rotate|send\b|send a|start|pause|resume|advance|cancel rollout|roll ?back|revert|revoke|disable|enable|reset|change role|generate|configure a product|import|set\b|open a re-?provision)/i;

before(async () => {
  server = await startServer({ UPDRAFT_MQTT_ENABLED: 'false' });
  browser = await launchBrowser();
  // Something on every page: a product, a device that checked in, a build, a release, a
  // running rollout, a configuration layer.
  await server.api('PUT', '/api/v1/products/lamp', { provisioning: 'open' });
  const mac = [...randomBytes(6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
  const provisioned = await fetch(`${server.url}/api/v1/device/provision`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ mac, product: 'lamp', hardware: 'esp32', version: '1.0.0' }),
  }).then((r) => r.json());
  fleet.device = provisioned.device_id;
  await fetch(`${server.url}/api/v1/device/checkin`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${provisioned.token}` },
    body: JSON.stringify({ version: '1.0.0' }),
  });
  const form = new FormData();
  form.append('product', 'lamp');
  form.append('file', new Blob([espImage({ version: '1.1.0', project: 'lamp' })]), 'lamp-1.1.0.bin');
  fleet.build = (await server.api('POST', '/api/v1/firmware', form)).id;
  fleet.release = (await server.api('POST', '/api/v1/releases', { product: 'lamp', version: '1.1.0', artifact_ids: [fleet.build] })).id;
  fleet.rollout = (await server.api('POST', '/api/v1/rollouts', { name: 'lamp 1.1.0', release_id: fleet.release, start: true })).id;
  await server.api('PUT', '/api/v1/configs/product/lamp', { content: { interval: 60 }, comment: 'e2e' });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The visible buttons and button-like links whose names say they change something. */
async function writeControls(page) {
  const names = await page
    .locator('main button:visible, main a.button:visible, main [role="button"]:visible, main input[type="submit"]:visible')
    .evaluateAll((els) => els.map((e) => (e.getAttribute('aria-label') || e.textContent || e.value || '').trim().replace(/\s+/g, ' ')));
  return names.filter((n) => WRITE.test(n) && !/^Revoke session of /.test(n));
}

test('a viewer sees no write buttons, and no Users & keys in the navigation', async () => {
  const page = await newPage(browser, server);
  await signInAs(page, server, 'viewer');
  const nav = page.getByRole('navigation', { name: 'Main' });
  assert.equal(await nav.getByRole('link', { name: 'Users & keys' }).count(), 0);
  assert.equal(await nav.getByRole('link', { name: 'Audit' }).count(), 0);

  const pages = [
    '/devices',
    `/devices/${fleet.device}`,
    '/firmware',
    '/releases',
    '/rollouts',
    `/rollouts/${fleet.rollout}`,
    '/config',
    '/config?kind=product&name=lamp',
    '/provisioning',
    '/users',
    '/',
    '/server',
  ];
  const found = {};
  for (const path of pages) {
    await page.goto(path);
    await page.getByRole('heading', { level: 1 }).first().waitFor();
    // Let the page's data arrive (its loading states end).
    await page.waitForFunction(() => !document.querySelector('main [data-state="loading"]'), null, { timeout: 10_000 }).catch(() => {});
    if (path === '/devices') {
      // Bulk actions appear once rows are selected: select one if the page lets a viewer.
      const box = page.locator('main tbody input[type="checkbox"]:visible').first();
      if ((await box.count()) > 0) await box.check();
    }
    const controls = await writeControls(page);
    if (controls.length) found[path] = controls;
    if (path === '/firmware') assert.equal(await page.locator('main input[type="file"]').count(), 0, 'no upload on /firmware');
  }
  assert.deepEqual(found, {}, 'write buttons shown to a viewer');
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

test('a viewer who tries anyway gets 403 from the server, and the UI shows it', async () => {
  const page = await newPage(browser, server);
  await signInAs(page, server, 'viewer');
  const cookies = await page.context().cookies();
  const csrf = decodeURIComponent(cookies.find((c) => c.name === 'updraft_csrf')?.value ?? '');
  assert.ok(csrf, 'the session set the CSRF cookie');
  const headers = { 'X-CSRF-Token': csrf, 'Content-Type': 'application/json' };
  const attempts = [
    ['post', '/api/v1/rollouts', { release_id: fleet.release, start: true }],
    ['patch', `/api/v1/devices/${fleet.device}`, { tags: ['hacked'] }],
    ['post', `/api/v1/rollouts/${fleet.rollout}/pause`, {}],
    ['delete', `/api/v1/firmware/${fleet.build}`, undefined],
    ['post', '/api/v1/users', { username: 'mallory', password: 'long-enough-password', role: 'admin' }],
    ['post', '/api/v1/api-keys', { name: 'mallory', role: 'admin' }],
    ['put', '/api/v1/products/lamp', { provisioning: 'open' }],
  ];
  for (const [method, path, data] of attempts) {
    const r = await page.request.fetch(path, { method: method.toUpperCase(), headers, data });
    assert.equal(r.status(), 403, `${method.toUpperCase()} ${path}`);
    const body = await r.json();
    assert.equal(body.error.code, 'forbidden');
  }
  // Nothing changed.
  assert.deepEqual((await server.api('GET', `/api/v1/devices/${fleet.device}`)).tags ?? [], []);
  assert.equal((await server.api('GET', `/api/v1/rollouts/${fleet.rollout}`)).state, 'running');

  // The new-rollout page: either no submit for a viewer, or the server's 403 message on submit.
  await page.goto(`/rollouts/new?release=${fleet.release}`);
  await page.getByRole('heading', { level: 1 }).first().waitFor();
  await page.waitForFunction(() => !document.querySelector('main [data-state="loading"]'), null, { timeout: 10_000 }).catch(() => {});
  const submit = page.locator('main button[type="submit"]:visible').filter({ hasText: /create|start|save/i });
  if ((await submit.count()) === 0) {
    assert.deepEqual(await writeControls(page), [], 'no write control on /rollouts/new');
  } else {
    await submit.first().click();
    const alert = page.getByRole('alert').filter({ hasText: /role|forbidden|403/i });
    await alert.waitFor();
    assert.match(await alert.innerText(), /viewer/);
  }
  assert.equal((await server.api('GET', '/api/v1/rollouts')).items.length, 1, 'no rollout was created');
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

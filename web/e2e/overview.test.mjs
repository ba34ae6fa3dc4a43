// The overview and server pages against a real server and a real fleet: devices provision and
// check in with their own tokens, a build is uploaded and rolled out, a device reports a failed
// update. The overview's numbers are the summary's, one chart bar per version, and changes
// arrive live (no reload); the empty fleet explains how to start; the server page names the
// database.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { checkA11y, espImage, eventually, launchBrowser, newPage, screenshot, signInAs, startServer } from './harness.mjs';

let server;
let browser;

before(async () => {
  server = await startServer({ UPDRAFT_MQTT_ENABLED: 'false' });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A device as the firmware would be: provisions with its MAC, then uses its token. */
async function device(product, version, hardware = 'esp32') {
  const mac = [...randomBytes(6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
  const r = await fetch(`${server.url}/api/v1/device/provision`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ mac, product, hardware, version }),
  });
  const text = await r.text();
  assert.ok(r.ok, `provision: ${r.status} ${text}`);
  const { device_id: id, token } = JSON.parse(text);
  const call = async (path, body) => {
    const res = await fetch(`${server.url}${path}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    assert.ok(res.ok, `${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  return { id, mac, checkin: (v = version) => call('/api/v1/device/checkin', { version: v, hardware }), report: (body) => call('/api/v1/device/update-status', body) };
}

async function upload(product, version) {
  const form = new FormData();
  form.append('product', product);
  form.append('file', new Blob([espImage({ version, project: product })]), `${product}-${version}.bin`);
  return server.api('POST', '/api/v1/firmware', form);
}

const numbers = async (page) => ({
  total: Number(await page.locator('[data-stat="total"]').innerText()),
  online: Number(await page.locator('[data-stat="online"]').innerText()),
  offline: Number(await page.locator('[data-stat="offline"]').innerText()),
});

test('an empty fleet says how a device registers and where to upload firmware', async () => {
  const page = await newPage(browser, server);
  await signInAs(page, server, 'admin');
  await page.goto('/');
  await page.getByText('No devices yet.').waitFor();
  assert.equal(await page.getByRole('link', { name: /Set up a product/ }).getAttribute('href'), '/provisioning');
  await page.getByTestId('no-firmware').waitFor();
  assert.equal(await page.getByTestId('no-firmware').getByRole('link').getAttribute('href'), '/firmware');
  assert.match(await page.locator('main').innerText(), /device\/provision/);
  await page.getByText('No rollout is running.').waitFor();
  await page.getByText('No update failed in the last 24 hours.').waitFor();
  await checkA11y(page);
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

test('the overview shows the summary, a bar per version, and changes live', async () => {
  for (const product of ['lamp', 'sensor']) await server.api('PUT', `/api/v1/products/${product}`, { provisioning: 'open' });
  const lamps = [];
  for (let i = 0; i < 4; i++) lamps.push(await device('lamp', i < 3 ? '1.0.0' : '0.9.0'));
  const sensors = [await device('sensor', '2.1.0', 'esp32s3'), await device('sensor', '2.1.0', 'esp32s3')];
  for (const d of [...lamps, ...sensors]) await d.checkin();
  await upload('lamp', '1.0.0');

  const page = await newPage(browser, server);
  await signInAs(page, server, 'viewer');
  await page.goto('/');
  await page.locator('svg.version-chart').waitFor();

  const summary = await server.api('GET', '/api/v1/devices/summary');
  assert.equal(summary.total, 6);
  assert.deepEqual(await numbers(page), { total: summary.total, online: summary.online, offline: summary.offline });
  // One bar per version, in the summary's order, each with its count.
  const bars = await page.locator('svg.version-chart rect.bar').evaluateAll((rects) => rects.map((r) => [r.dataset.key, Number(r.dataset.count)]));
  assert.deepEqual(bars, summary.by_version.map((b) => [b.key ?? '', b.count]));
  assert.deepEqual(bars, [['1.0.0', 3], ['2.1.0', 2], ['0.9.0', 1]]);
  // The chart is described for screen readers, and the numbers are in a table too.
  assert.match(await page.locator('svg.version-chart desc').textContent(), /1\.0\.0: 3 devices \(50%\)/);
  await page.getByText('The versions as a table').click();
  assert.equal(await page.locator('tr[data-version="2.1.0"] td').nth(1).innerText(), '2');
  // By product and by hardware.
  assert.equal(await page.getByTestId('product').locator('tr[data-key="lamp"] td.num').innerText(), '4');
  assert.equal(await page.getByTestId('hardware').locator('tr[data-key="esp32s3"] td.num').innerText(), '2');
  assert.equal(await page.getByTestId('no-firmware').count(), 0, 'firmware exists: no hint');
  await checkA11y(page);

  // A new device checking in on a new version appears without a reload.
  const late = await device('sensor', '2.2.0', 'esp32s3');
  await late.checkin();
  await page.locator('svg.version-chart rect.bar[data-key="2.2.0"]').waitFor();
  await eventually(async () => (await numbers(page)).total === 7, 10_000, 'the total to reach 7');
  const after = await server.api('GET', '/api/v1/devices/summary');
  assert.deepEqual(await numbers(page), { total: after.total, online: after.online, offline: after.offline });
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

test('a running rollout shows its progress and a failed update appears live in recent failures', async () => {
  const build = await upload('lamp', '1.1.0');
  const release = await server.api('POST', '/api/v1/releases', { product: 'lamp', version: '1.1.0', artifact_ids: [build.id] });
  const lamp = await device('lamp', '1.0.0');
  await lamp.checkin();

  const page = await newPage(browser, server);
  await signInAs(page, server, 'operator');
  await page.goto('/');
  await page.getByText('No update failed in the last 24 hours.').waitFor();

  const rollout = await server.api('POST', '/api/v1/rollouts', { name: 'lamp 1.1.0 everywhere', release_id: release.id, stages: [{ percent: 100, error_threshold: { count: 5 } }], start: true });
  // The rollout appears live (rollout.transition), with its numbers.
  const item = page.locator(`li[data-rollout="${rollout.id}"]`);
  await item.waitFor();
  assert.equal(await item.getByRole('link').getAttribute('href'), `/rollouts/${rollout.id}`);
  assert.match(await item.innerText(), /lamp 1\.1\.0 everywhere/);

  // The device is offered 1.1.0 and reports that it failed.
  const answer = await lamp.checkin();
  assert.equal(answer.update?.version, '1.1.0', JSON.stringify(answer));
  await lamp.report({ release_id: answer.update.release_id, version: '1.1.0', state: 'downloading', progress: 10 });
  await lamp.report({ release_id: answer.update.release_id, version: '1.1.0', state: 'failed', message: 'flash write failed at 0x1a0000' });

  const row = page.getByTestId('failures').locator(`tr[data-device="${lamp.id}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /1\.0\.0 → 1\.1\.0/);
  assert.match(await row.innerText(), /flash write failed at 0x1a0000/);
  assert.equal(await row.getByRole('link').getAttribute('href'), `/devices/${lamp.id}`);
  const api = await server.api('GET', `/api/v1/updates?state=failed&since=${encodeURIComponent(new Date(Date.now() - 86_400_000).toISOString())}`);
  assert.ok(api.items.some((u) => u.device_id === lamp.id), 'the API lists the same failure');
  // The rollout's line counts the failure too.
  await eventually(async () => /1 failed/.test(await item.innerText()), 10_000, 'the rollout to count the failure');

  await checkA11y(page);
  await screenshot(page, 'overview');
  await page.setViewportSize({ width: 390, height: 844 });
  await checkA11y(page);
  await screenshot(page, 'overview-phone');
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

test('a rollout that a failure halts is shown as waiting for an operator, live', async () => {
  await server.api('PUT', '/api/v1/products/fan', { provisioning: 'open' });
  const build = await upload('fan', '3.0.0');
  const release = await server.api('POST', '/api/v1/releases', { product: 'fan', version: '3.0.0', artifact_ids: [build.id] });
  const fan = await device('fan', '2.0.0');
  await fan.checkin();
  const rollout = await server.api('POST', '/api/v1/rollouts', { name: 'fan 3.0.0', release_id: release.id, stages: [{ percent: 100, error_threshold: { count: 1 } }], start: true });

  const page = await newPage(browser, server);
  await signInAs(page, server, 'viewer');
  await page.goto('/');
  await page.locator(`li[data-rollout="${rollout.id}"]`).waitFor();
  assert.equal(await page.getByTestId('halted').count(), 0);

  const answer = await fan.checkin();
  await fan.report({ release_id: answer.update.release_id, version: '3.0.0', state: 'failed', message: 'brownout during install' });
  const halted = page.getByTestId('halted');
  await halted.waitFor();
  assert.equal(await halted.getByRole('link', { name: 'fan 3.0.0' }).getAttribute('href'), `/rollouts/${rollout.id}`);
  await page.locator(`li[data-rollout="${rollout.id}"]`).waitFor({ state: 'detached' });
  assert.equal((await server.api('GET', `/api/v1/rollouts/${rollout.id}`)).state, 'halted');
  await checkA11y(page);
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

test('an error of the summary shows the server message and a retry, never a blank page', async () => {
  const page = await newPage(browser, server);
  await signInAs(page, server, 'viewer');
  // The one faked answer of these tests: a database outage is hard to cause on purpose.
  await page.route('**/api/v1/devices/summary*', (route) =>
    route.fulfill({ status: 503, json: { error: { code: 'unavailable', message: 'the database does not answer' } } }),
  );
  await page.goto('/');
  const alert = page.getByRole('alert').filter({ hasText: 'the database does not answer' });
  await alert.waitFor();
  assert.match(await alert.innerText(), /unavailable/);
  // The other sections still load.
  await page.locator('#rollouts-h').waitFor();
  await page.unroute('**/api/v1/devices/summary*');
  await alert.getByRole('button', { name: 'Try again' }).click();
  await page.locator('[data-stat="total"]').waitFor();
  assert.equal(await page.getByRole('alert').count(), 0);
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

test('the server page names the database, blob store, MQTT mode and readiness', async () => {
  const info = await server.api('GET', '/api/v1/server');
  const page = await newPage(browser, server);
  await signInAs(page, server, 'viewer');
  await page.goto('/server');
  const facts = page.getByTestId('server-info');
  await facts.waitFor();
  assert.match(await facts.locator('[data-fact="database"]').innerText(), new RegExp(info.database));
  assert.match(await facts.locator('[data-fact="database"]').innerText(), /SQLite \(sqlite\)/);
  assert.match(await facts.locator('[data-fact="blob_store"]').innerText(), /local/);
  assert.match(await facts.locator('[data-fact="mqtt"]').innerText(), /Off/);
  assert.match(await facts.innerText(), new RegExp(info.version.replace(/\./g, '\\.')));
  assert.equal(await page.getByTestId('ready').innerText(), 'ready');
  assert.match(await page.getByTestId('mqtt').innerText(), /MQTT is off/);
  for (const href of ['/api/docs/', '/admin/redoc', '/metrics']) assert.equal(await page.locator(`a[href="${href}"]`).count(), 1, href);
  await checkA11y(page);
  await screenshot(page, 'server');
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

// The devices pages against the real server in Chromium: a device appears live in the open
// table when it is registered and checks in; filters, search, sort and pages live in the
// address bar and survive a reload; bulk tag and pin (one device refused by its product's
// anti-rollback floor); the device page (timeline, configuration sources with masked secrets,
// a command's answer live, pin/unpin, token rotation shown once, delete); a viewer sees no
// write buttons and gets 403 when trying anyway.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { checkA11y, createUser, espImage, eventually, launchBrowser, newPage, screenshot, signIn, signInAs, startServer } from './harness.mjs';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

let macCounter = 0x100;
function nextMac() {
  macCounter += 1;
  const hex = macCounter.toString(16).padStart(4, '0').toUpperCase();
  return `24:0A:C4:E2:${hex.slice(0, 2)}:${hex.slice(2)}`;
}

/** Registers a device with a token; returns the device record (with `token`). */
async function register(body) {
  return server.api('POST', '/api/v1/devices', { mac: nextMac(), issue_token: true, ...body });
}

/** A device's own call (check-in, update status, setup status) with its token. */
async function asDevice(token, path, body) {
  const r = await fetch(server.url + path, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json().catch(() => null) };
}

function row(page, id) {
  return page.locator(`tr[data-device-id="${id}"]`);
}

async function visibleIds(page) {
  return page.locator('tbody tr[data-device-id]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-device-id')));
}

async function rowNames(page) {
  return page.locator('tbody tr[data-device-id] td.name a').allInnerTexts();
}

test('a device appears live in the open table when it is registered and checks in', async () => {
  const page = await newPage(browser, server);
  await signInAs(page, server, 'operator');
  // The table filtered on a tag: only devices that match it may appear.
  await page.goto('/devices?tag=live');
  await page.getByRole('heading', { name: 'Devices', level: 1 }).waitFor();
  await page.getByText('No device matches these filters.').waitFor();
  // A marker that a reload would wipe.
  await page.evaluate(() => ((window).__noReload = true));

  const other = await register({ name: 'Other lamp', product: 'lamp', hardware: 'esp32', tags: ['elsewhere'] });
  const device = await register({ name: 'Live lamp', product: 'lamp', hardware: 'esp32', tags: ['live'] });
  const live = row(page, device.id);
  await live.waitFor();
  assert.match(await live.locator('td.status').innerText(), /offline\s+never/);

  // It checks in through the device API: the row turns online, with its version, in place.
  const checkin = await asDevice(device.token, '/api/v1/device/checkin', { version: '1.0.0', attributes: { rssi: -58 } });
  assert.equal(checkin.status, 200);
  await asDevice(other.token, '/api/v1/device/checkin', { version: '1.0.0' });
  await eventually(async () => /online/.test(await live.locator('td.status').innerText()), 10_000, 'the row to show online');
  assert.match(await live.innerText(), /Live lamp/);
  assert.match(await live.locator('td.version').innerText(), /1\.0\.0/);
  assert.match(await live.locator('td.status').innerText(), /just now|s ago/);
  assert.deepEqual(await visibleIds(page), [device.id], 'the device outside the filter stays out');
  assert.equal(await page.getByTestId('devices-total').innerText(), '1 device matches');
  assert.equal(await page.evaluate(() => (window).__noReload), true, 'the page was not reloaded');
  assert.deepEqual(page.pageErrors, []);
});

test('filters, search, sort and pages live in the address bar and survive a reload', async () => {
  const rows = [];
  for (let i = 1; i <= 30; i++) {
    rows.push({
      mac: nextMac(),
      name: `Meter ${String(i).padStart(2, '0')}`,
      product: 'meter',
      hardware: i % 3 === 0 ? 'esp32s3' : 'esp32',
      version: i % 2 ? '2.0.0' : '2.1.0',
      tags: i % 2 ? ['odd', 'plant-a'] : ['even', 'plant-a'],
      owner: i <= 5 ? 'carol' : null,
    });
  }
  // Imported in reverse, so that "Name" and "Newest first" differ.
  const imported = await server.api('POST', '/api/v1/devices/import', [...rows].reverse());
  assert.equal(imported.created, 30, JSON.stringify(imported.errors));
  // Two of them check in: online.
  const online = await register({ name: 'Meter 31', product: 'meter', hardware: 'esp32', version: '2.1.0', tags: ['even', 'plant-a'] });
  await asDevice(online.token, '/api/v1/device/checkin', { version: '2.1.0' });

  const page = await newPage(browser, server);
  await signInAs(page, server, 'operator');
  await page.goto('/devices');
  await page.locator('table.devices').waitFor();

  // Search: typed, debounced, in the URL.
  await page.getByLabel('Search').fill('Meter');
  await page.waitForURL(/[?&]q=Meter/);
  await eventually(async () => (await page.getByTestId('devices-total').innerText()).startsWith('31 '), 10_000, '31 matches');

  // Sort by name, 25 a page.
  await page.getByLabel('Sort').selectOption('name');
  await page.waitForURL(/sort=name/);
  await page.getByLabel('Per page').selectOption('25');
  await page.waitForURL(/limit=25/);
  await eventually(async () => (await rowNames(page))[0] === 'Meter 01' && (await rowNames(page)).length === 25, 10_000, 'page 1 sorted by name');
  assert.deepEqual((await rowNames(page)).slice(0, 3), ['Meter 01', 'Meter 02', 'Meter 03']);

  // Page 2.
  await page.getByRole('button', { name: 'Next' }).click();
  await page.waitForURL(/offset=25/);
  await eventually(async () => (await rowNames(page))[0] === 'Meter 26', 10_000, 'page 2');
  assert.deepEqual(await rowNames(page), ['Meter 26', 'Meter 27', 'Meter 28', 'Meter 29', 'Meter 30', 'Meter 31']);
  assert.match(await page.getByRole('navigation', { name: 'Pages' }).innerText(), /26–31\s+of 31/);

  // A filter goes back to the first page: tag odd, 15 devices.
  await page.getByText('More filters').click();
  await page.getByLabel('Tag').fill('odd');
  await page.getByLabel('Tag').press('Tab');
  await page.waitForURL((url) => url.searchParams.get('tag') === 'odd' && !url.searchParams.has('offset'));
  await eventually(async () => (await rowNames(page)).length === 15, 10_000, '15 odd meters');
  assert.ok((await rowNames(page)).every((n) => Number(n.slice(-2)) % 2 === 1));

  // Status online among the tag even: only the one that checked in.
  await page.getByLabel('Tag').fill('even');
  await page.getByLabel('Tag').press('Tab');
  await page.getByLabel('Status').selectOption('online');
  await page.waitForURL((url) => url.searchParams.get('status') === 'online' && url.searchParams.get('tag') === 'even');
  await eventually(async () => JSON.stringify(await rowNames(page)) === JSON.stringify(['Meter 31']), 10_000, 'the online meter');

  // Hardware and owner.
  await page.getByLabel('Status').selectOption('');
  await page.getByLabel('Tag').fill('');
  await page.getByLabel('Tag').press('Tab');
  await page.getByLabel('Owner').fill('carol');
  await page.getByLabel('Owner').press('Tab');
  await page.getByLabel('Hardware').fill('esp32s3');
  await page.getByLabel('Hardware').press('Tab');
  await page.waitForURL((url) => url.searchParams.get('owner') === 'carol' && url.searchParams.get('hardware') === 'esp32s3');
  await eventually(async () => JSON.stringify(await rowNames(page)) === JSON.stringify(['Meter 03']), 10_000, 'carol’s esp32s3 meter');

  // The same link in a fresh page (a shared link) shows the same thing; so does a reload.
  const shared = page.url();
  await page.reload();
  await eventually(async () => JSON.stringify(await rowNames(page)) === JSON.stringify(['Meter 03']), 10_000, 'the same page after a reload');
  assert.equal(await page.getByLabel('Owner').inputValue(), 'carol');
  assert.equal(await page.getByLabel('Search').inputValue(), 'Meter');

  const other = await newPage(browser, server);
  await signInAs(other, server, 'viewer');
  await other.goto(shared);
  await eventually(async () => JSON.stringify(await rowNames(other)) === JSON.stringify(['Meter 03']), 10_000, 'the shared link');

  // Version filter and a search on a MAC; then no match: the empty state names the filter.
  await page.goto('/devices?version=2.1.0&product=meter&sort=mac&limit=100');
  await eventually(async () => (await rowNames(page)).length === 16, 10_000, '16 meters on 2.1.0');
  const macs = await page.locator('tbody td.name .mono').allInnerTexts();
  assert.deepEqual(macs, [...macs].sort(), 'sorted by MAC');
  await page.getByLabel('Search').fill('no-such-device');
  await page.getByText('No device matches these filters.').waitFor();
  await checkA11y(page);

  // A bad link: the server's message, not a blank page; the device page of an unknown id too.
  await page.goto('/devices?last_seen_after=yesterday');
  const alert = page.getByRole('alert');
  await alert.waitFor();
  assert.match(await alert.innerText(), /last_seen_after/);
  assert.match(await alert.innerText(), /invalid_query/);
  await page.goto('/devices/AA:BB:CC:00:00:99');
  await page.getByRole('alert').waitFor();
  assert.match(await page.getByRole('alert').innerText(), /not found/);

  await page.goto('/devices?product=meter&sort=name');
  await page.locator('table.devices').waitFor();
  await eventually(async () => (await rowNames(page)).length === 31, 10_000, 'all meters');
  // Two selected: the bulk actions bar.
  await page.getByLabel('Select Meter 02').check();
  await page.getByLabel('Select Meter 04').check();
  assert.match(await page.getByTestId('selection-count').innerText(), /^2 selected devices$/);
  await checkA11y(page);
  await screenshot(page, 'devices-list');

  const phone = await newPage(browser, server, { viewport: { width: 390, height: 844 } });
  await signInAs(phone, server, 'operator');
  await phone.goto('/devices?product=meter&sort=name&limit=25');
  await phone.locator('table.devices').waitFor();
  await eventually(async () => (await rowNames(phone)).length === 25, 10_000, 'the phone page');
  // The secondary columns are hidden; the table fits the screen.
  assert.equal(await phone.getByRole('columnheader', { name: 'Tags' }).isVisible(), false);
  const overflow = await phone.evaluate(() => {
    const wrap = document.querySelector('.table-wrap');
    return Math.max(wrap.scrollWidth - wrap.clientWidth, document.documentElement.scrollWidth - document.documentElement.clientWidth);
  });
  assert.ok(overflow <= 0, `no horizontal scrolling at 390 px (${overflow} px too wide)`);
  await checkA11y(phone);
  await screenshot(phone, 'devices-list-phone');
  assert.deepEqual([...page.pageErrors, ...other.pageErrors, ...phone.pageErrors], []);
});

test('bulk tag and pin, with one device refused by its product’s anti-rollback floor', async () => {
  await server.api('PUT', '/api/v1/products/valve', { provisioning: 'open', min_version: '2.0.0' });
  const pumps = [];
  for (let i = 1; i <= 3; i++) pumps.push(await register({ name: `Pump ${i}`, product: 'pump', version: '1.4.0', tags: ['bulk-e2e'] }));
  const valve = await register({ name: 'Valve 1', product: 'valve', version: '2.1.0', tags: ['bulk-e2e'] });
  const all = [...pumps, valve];

  const page = await newPage(browser, server);
  await signInAs(page, server, 'operator');
  await page.goto('/devices?tag=bulk-e2e&sort=name');
  await eventually(async () => (await rowNames(page)).length === 4, 10_000, 'the four devices');

  // Select all on the page; add a tag.
  await page.getByLabel('Select all devices on this page').check();
  assert.match(await page.getByTestId('selection-count').innerText(), /4 selected devices/);
  await page.getByRole('button', { name: 'Add tag' }).click();
  let dialog = page.getByRole('dialog');
  await dialog.getByLabel('Tag').fill('wave-1');
  assert.match(await dialog.innerText(), /Adds the tag wave-1 to 4 devices/);
  await checkA11y(page);
  await dialog.getByRole('button', { name: 'Add a tag' }).click();
  await dialog.waitFor({ state: 'hidden' });
  assert.match(await page.getByTestId('bulk-result').innerText(), /4 of 4 devices added the tag “wave-1”/);
  for (const d of all) assert.ok((await server.api('GET', `/api/v1/devices/${d.id}`)).tags.includes('wave-1'));
  await eventually(async () => /wave-1/.test(await row(page, valve.id).innerText()), 10_000, 'the rows to show the new tag');

  // Pin to 1.5.0: the valve's product refuses anything below 2.0.0.
  await page.getByRole('button', { name: 'Pin to version' }).click();
  dialog = page.getByRole('dialog');
  await dialog.getByLabel('Version').fill('1.5.0');
  assert.match(await dialog.innerText(), /Pins 4 devices .* to version 1\.5\.0/);
  await dialog.getByRole('button', { name: 'Pin to a version' }).click();
  await dialog.waitFor({ state: 'hidden' });
  const result = page.getByTestId('bulk-result');
  await eventually(async () => /3 of 4 devices pinned to 1\.5\.0/.test(await result.innerText()), 10_000, 'the pin result');
  const text = await result.innerText();
  assert.match(text, /1 refused/);
  assert.match(text, /Valve 1: .*anti-rollback floor.*below_anti_rollback_floor/s);
  for (const d of pumps) assert.equal((await server.api('GET', `/api/v1/devices/${d.id}`)).target_version, '1.5.0');
  assert.equal((await server.api('GET', `/api/v1/devices/${valve.id}`)).target_version, null);
  await eventually(async () => /pinned 1\.5\.0/.test(await row(page, pumps[0].id).innerText()), 10_000, 'the rows to show the pin');
  await screenshot(page, 'devices-bulk');

  // "Start a rollout on this selection" hands the ids to the rollout form.
  await page.getByRole('button', { name: 'Start a rollout on this selection' }).click();
  await page.waitForURL(/\/rollouts\/new\?devices=/);
  const ids = new URL(page.url()).searchParams.get('devices').split(',');
  assert.deepEqual(ids.sort(), all.map((d) => d.id).sort());

  // Every device matching the filter, two a page: unpin all four.
  await page.goto('/devices?tag=bulk-e2e&sort=name&limit=2');
  await eventually(async () => (await rowNames(page)).length === 2, 10_000, 'two a page');
  await page.getByLabel('Select all devices on this page').check();
  await page.getByRole('button', { name: 'Select all 4 devices matching the filter' }).click();
  assert.match(await page.getByTestId('selection-count').innerText(), /All 4 devices matching: tag bulk-e2e/);
  await page.getByRole('button', { name: 'Unpin' }).click();
  dialog = page.getByRole('dialog');
  assert.match(await dialog.innerText(), /Removes the pinned version of 4 devices/);
  await dialog.getByRole('button', { name: 'Unpin' }).click();
  await dialog.waitFor({ state: 'hidden' });
  await eventually(async () => /3 of 4 devices unpinned\.\s*1 already were/.test(await page.getByTestId('bulk-result').innerText()), 10_000, 'the unpin result');
  for (const d of all) assert.equal((await server.api('GET', `/api/v1/devices/${d.id}`)).target_version, null);

  await page.getByRole('button', { name: 'Start a rollout on this selection' }).click();
  await page.waitForURL(/\/rollouts\/new\?filter=/);
  assert.deepEqual(JSON.parse(new URL(page.url()).searchParams.get('filter')), { tag: 'bulk-e2e' });
  assert.deepEqual(page.pageErrors, []);
});

test('device page: timeline, configuration sources, a command live, pin and unpin, token shown once, delete', async () => {
  await server.api('PUT', '/api/v1/products/lamp', { provisioning: 'open', min_version: '1.0.0' });
  const device = await register({ name: 'Hall lamp', product: 'lamp', hardware: 'esp32', version: '1.0.0', tags: ['eu'], owner: 'dana', metadata: { room: 'hall' } });
  // Configuration: product defaults with a secret, a tag layer, the device's own layer.
  await server.api('PUT', '/api/v1/configs/product/lamp', { content: { wifi: { ssid: 'plant-net', password: { $secret: 'hunter2-secret' } }, interval: 60 } });
  await server.api('PUT', '/api/v1/configs/tag/eu', { content: { interval: 30, locale: 'de' } });
  await server.api('PUT', `/api/v1/configs/device/${device.id}`, { content: { label: 'north door' } });
  // A build newer than the device's: offered at the check-in, then a failed update.
  const form = new FormData();
  form.append('file', new Blob([espImage({ version: '1.1.0', project: 'lamp' })]), 'lamp-1.1.0.bin');
  form.append('product', 'lamp');
  await server.api('POST', '/api/v1/firmware', form);
  const checkin = await asDevice(device.token, '/api/v1/device/checkin', { version: '1.0.0', attributes: { rssi: -61 } });
  assert.equal(checkin.body.update?.version, '1.1.0', JSON.stringify(checkin.body));
  const release = checkin.body.update.release_id;
  for (const report of [
    { state: 'downloading', progress: 40 },
    { state: 'failed', message: 'flash write failed at 0x110000' },
  ]) {
    const r = await asDevice(device.token, '/api/v1/device/update-status', { release_id: release, version: '1.1.0', ...report });
    assert.equal(r.status, 200, JSON.stringify(r.body));
  }
  const setup = await asDevice(device.token, '/api/v1/device/setup-status', { status_code: 2, title: 'WIFI_CONNECTED', description: 'plant-net' });
  assert.ok(setup.status < 300, JSON.stringify(setup.body));

  const page = await newPage(browser, server);
  await signInAs(page, server, 'operator');
  await page.goto(`/devices/${device.id}`);
  await page.getByRole('heading', { name: 'Hall lamp', level: 1 }).waitFor();
  const attributes = page.locator('section', { has: page.getByRole('heading', { name: 'Attributes' }) });
  const facts = await attributes.innerText();
  for (const text of [device.id, device.mac, 'lamp', 'esp32', 'dana', 'eu', 'room', 'hall', 'rssi', '-61']) assert.ok(facts.includes(text), `attributes show ${text}`);

  // Timeline: the attempt with its states and the device's error.
  const attempt = page.getByTestId('attempt').first();
  await attempt.waitFor();
  const timeline = await attempt.innerText();
  assert.match(timeline, /1\.0\.0 → 1\.1\.0/);
  assert.match(timeline, /offered[\s\S]*downloading[\s\S]*40%[\s\S]*failed/);
  assert.match(timeline, /flash write failed at 0x110000/);

  // Configuration: each value with its layer; the secret stays masked.
  const config = page.locator('section', { has: page.getByRole('heading', { name: 'Effective configuration' }) });
  await config.locator('table').waitFor();
  const configRows = await config.locator('tbody tr').evaluateAll((rows) => rows.map((r) => [...r.cells].map((c) => c.innerText.trim())));
  const byPointer = Object.fromEntries(configRows.map(([p, v, s]) => [p, [v, s]]));
  assert.deepEqual(byPointer['/interval'], ['30', 'tag:eu']);
  assert.deepEqual(byPointer['/locale'], ['de', 'tag:eu']);
  assert.deepEqual(byPointer['/wifi/ssid'], ['plant-net', 'product:lamp']);
  assert.deepEqual(byPointer['/label'], ['north door', 'this device']);
  assert.match(byPointer['/wifi/password'][0], /secret/);
  assert.ok(!(await page.content()).includes('hunter2-secret'), 'the secret value is nowhere on the page');

  // Setup history.
  assert.match(await page.locator('section', { has: page.getByRole('heading', { name: 'Setup history' }) }).innerText(), /WIFI_CONNECTED/);

  // A command: sent, then its end arrives live (the device is not connected: it times out).
  await page.getByLabel('Command', { exact: true }).fill('ping');
  await page.getByLabel('Timeout (s)').fill('1');
  await page.getByRole('button', { name: 'Send command' }).click();
  const command = page.locator('tr[data-command-id]').first();
  await command.waitFor();
  await eventually(async () => /timed_out/.test(await command.innerText()), 15_000, 'the command to end live');

  // The device checks in again: the page follows.
  await asDevice(device.token, '/api/v1/device/checkin', { version: '1.0.1' });
  await eventually(async () => (await page.getByTestId('device-version').innerText()) === '1.0.1', 10_000, 'the new version live');
  assert.equal(await page.getByTestId('device-status').innerText(), 'online');
  await checkA11y(page);
  await screenshot(page, 'devices-detail');

  // Pin below the floor: the server's refusal, in the dialog; then a valid pin; then unpin.
  await page.getByRole('button', { name: 'Pin to a version' }).click();
  let dialog = page.getByRole('dialog');
  await dialog.getByLabel('Version').fill('0.9.0');
  await dialog.getByRole('button', { name: 'Pin' }).click();
  await dialog.getByRole('alert').waitFor();
  assert.match(await dialog.getByRole('alert').innerText(), /below 1\.0\.0, the anti-rollback floor of product `lamp`/);
  await dialog.getByLabel('Version').fill('1.0.0');
  await dialog.getByRole('button', { name: 'Pin' }).click();
  await dialog.waitFor({ state: 'hidden' });
  assert.equal(await page.getByTestId('device-target').innerText(), '1.0.0');
  assert.equal((await server.api('GET', `/api/v1/devices/${device.id}`)).target_version, '1.0.0');
  await page.getByRole('button', { name: 'Unpin' }).click();
  dialog = page.getByRole('dialog');
  await dialog.getByRole('button', { name: 'Unpin' }).click();
  await dialog.waitFor({ state: 'hidden' });
  assert.equal(await page.getByTestId('device-target').innerText(), 'not pinned');
  assert.equal((await server.api('GET', `/api/v1/devices/${device.id}`)).target_version, null);

  // Rotate the token: shown once; the old one stops working, the new one works.
  await page.getByRole('button', { name: 'Rotate token' }).click();
  dialog = page.getByRole('dialog');
  assert.match(await dialog.innerText(), /current token stops working/);
  await dialog.getByRole('button', { name: 'Rotate token' }).click();
  await dialog.waitFor({ state: 'hidden' });
  const token = (await page.locator('.secret code').innerText()).trim();
  assert.match(token, /^upd_dev_/);
  assert.equal((await asDevice(device.token, '/api/v1/device/checkin', { version: '1.0.1' })).status, 401);
  assert.equal((await asDevice(token, '/api/v1/device/checkin', { version: '1.0.1' })).status, 200);
  await page.getByRole('button', { name: 'I have copied it' }).click();
  assert.ok(!(await page.content()).includes(token), 'the token is gone once dismissed');
  await page.reload();
  await page.getByRole('heading', { name: 'Hall lamp', level: 1 }).waitFor();
  assert.ok(!(await page.content()).includes(token), 'and not shown again');

  // Delete, with a confirmation naming the device.
  await page.getByRole('button', { name: 'Delete device' }).click();
  dialog = page.getByRole('dialog');
  assert.match(await dialog.innerText(), new RegExp(`Delete Hall lamp \\(${device.mac}\\)`));
  await dialog.getByRole('button', { name: 'Delete device' }).click();
  await page.waitForURL(/\/devices$/);
  await assert.rejects(server.api('GET', `/api/v1/devices/${device.id}`), /404/);
  assert.deepEqual(page.pageErrors, []);
});

test('a viewer sees no write buttons on the devices pages, and gets 403 when trying anyway', async () => {
  const device = await register({ name: 'Viewer lamp', product: 'lamp', version: '1.0.0' });
  const password = await createUser(server, 'vera', 'viewer');
  const page = await newPage(browser, server);
  await signIn(page, { username: 'vera', password });
  await page.goto('/devices?q=Viewer%20lamp');
  await row(page, device.id).waitFor();
  assert.equal(await page.getByRole('checkbox').count(), 0, 'no selection for a viewer');
  for (const name of ['Add tag', 'Pin to version', 'Unpin', 'Start a rollout on this selection']) {
    assert.equal(await page.getByRole('button', { name }).count(), 0, `no ${name}`);
  }
  await checkA11y(page);

  await page.goto(`/devices/${device.id}`);
  await page.getByRole('heading', { name: 'Viewer lamp', level: 1 }).waitFor();
  await page.getByRole('heading', { name: 'Commands' }).waitFor();
  for (const name of ['Pin to a version', 'Unpin', 'Rotate token', 'Delete device', 'Send command']) {
    assert.equal(await page.getByRole('button', { name }).count(), 0, `no ${name}`);
  }
  await checkA11y(page);

  // The server refuses the writes the page hides.
  const statuses = await page.evaluate(async (id) => {
    const csrf = decodeURIComponent(document.cookie.match(/updraft_csrf=([^;]+)/)?.[1] ?? '');
    const headers = { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf };
    const patch = await fetch(`/api/v1/devices/${id}`, { method: 'PATCH', headers, body: JSON.stringify({ target_version: '1.0.0' }) });
    const token = await fetch(`/api/v1/devices/${id}/token`, { method: 'POST', headers, body: '{}' });
    const del = await fetch(`/api/v1/devices/${id}`, { method: 'DELETE', headers });
    return [patch.status, token.status, del.status];
  }, device.id);
  assert.deepEqual(statuses, [403, 403, 403]);
  assert.equal((await server.api('GET', `/api/v1/devices/${device.id}`)).target_version, null);
  assert.deepEqual(page.pageErrors, []);
});

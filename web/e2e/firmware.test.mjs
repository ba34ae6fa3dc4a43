// Firmware page: an upload of a 2 MiB ESP32 image through the file picker whose bar reaches
// 100% and whose build appears with its SHA-256 and chip; a refused duplicate shows the
// server's 409 message; deleting a build in a release shows the 409 reason; marking latest,
// editing notes and channel, deleting an unused build; the build usage (new route).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkA11y, espImage, eventually, launchBrowser, newPage, screenshot, signInAs, startServer } from './harness.mjs';

let server;
let browser;
let dir;

before(async () => {
  server = await startServer({ UPDRAFT_MQTT_ENABLED: 'false' });
  browser = await launchBrowser();
  dir = mkdtempSync(join(tmpdir(), 'updraft-e2e-fw-'));
});

after(async () => {
  await browser?.close();
  await server?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function imageFile(name, opts) {
  const bytes = espImage(opts);
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return { path, sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length };
}

/** Does the server have the build-usage route (h15-api)? */
async function hasUsageRoute() {
  const list = await server.api('GET', '/api/v1/firmware?limit=1');
  if (!list.items.length) return false;
  const r = await fetch(`${server.url}/api/v1/firmware/${list.items[0].id}/usage`, { headers: { Authorization: `Bearer ${server.adminKey}` } });
  return r.status === 200;
}

test('upload with a progress bar to 100%, the build listed with SHA-256 and chip; a duplicate refused with the 409 message', async () => {
  const page = await newPage(browser, server);
  await signInAs(page, server, 'operator');
  await page.goto('/firmware');
  await page.getByRole('heading', { name: 'Firmware', level: 1 }).waitFor();
  await page.locator('[data-state="empty"]').waitFor();
  await checkA11y(page);

  const first = imageFile('lamp-1.0.0.bin', { version: '1.0.0', project: 'lamp', payload: 2 * 1024 * 1024 });
  await page.getByLabel('Firmware files', { exact: true }).setInputFiles(first.path);
  const item = page.locator('li.item[data-file="lamp-1.0.0.bin"]');
  await item.waitFor();
  // The browser read the image header: the placeholders say what the server will use.
  await eventually(async () => (await item.getByLabel('Version').getAttribute('placeholder')) === '1.0.0', 5000, 'the version read from the image');
  await item.getByLabel('Notes').fill('First build for the lamp');
  await item.getByRole('button', { name: 'Upload', exact: true }).click();

  const bar = item.getByRole('progressbar');
  await eventually(async () => (await item.getAttribute('data-status')) === 'done', 30_000, 'the upload to finish');
  assert.equal(await bar.getAttribute('value'), '100', 'the bar reached 100%');
  assert.match(await item.innerText(), /stored as lamp 1\.0\.0/);

  // The build is in the list, with its SHA-256 and the chip from the image header.
  const card = page.locator('article.build', { hasText: 'lamp 1.0.0' });
  await card.waitFor();
  assert.equal((await card.locator('[data-sha256]').innerText()).trim(), first.sha256);
  assert.equal((await card.locator('[data-chip]').innerText()).trim(), 'esp32');
  assert.match(await card.innerText(), /IDF v5\.3\.1/);
  assert.match(await card.innerText(), /First build for the lamp/);
  await card.getByRole('button', { name: `Copy SHA-256: ${first.sha256}` }).waitFor();
  await card.getByRole('link', { name: 'Flash a board with this build' }).waitFor();
  assert.match(await card.getByRole('link', { name: 'Flash a board with this build' }).getAttribute('href'), /^\/flash\?firmware=/);

  // Same version, different bytes: refused with the server's message.
  const dup = imageFile('lamp-1.0.0-other.bin', { version: '1.0.0', project: 'lamp', payload: 8192 });
  await page.getByLabel('Firmware files', { exact: true }).setInputFiles(dup.path);
  const dupItem = page.locator('li.item[data-file="lamp-1.0.0-other.bin"]');
  await dupItem.getByRole('button', { name: 'Upload', exact: true }).click();
  const alert = dupItem.getByRole('alert');
  await alert.waitFor();
  const direct = await fetch(`${server.url}/api/v1/firmware?product=lamp&version=1.0.0`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${server.adminKey}`, 'Content-Type': 'application/octet-stream' },
    body: espImage({ version: '1.0.0', project: 'lamp', payload: 1024 }),
  });
  assert.equal(direct.status, 409);
  const { error } = await direct.json();
  assert.equal(error.code, 'version_exists');
  const text = await alert.innerText();
  assert.ok(text.includes(error.message), `the server's message is shown: ${text}`);
  assert.match(text, /version_exists/);
  await checkA11y(page);

  // Several files at once: two new versions, uploaded with "Upload all".
  const a = imageFile('lamp-1.1.0.bin', { version: '1.1.0', project: 'lamp', payload: 65536 });
  const b = imageFile('lamp-1.2.0.bin', { version: '1.2.0', project: 'lamp', payload: 65536 });
  await dupItem.getByRole('button', { name: /Remove/ }).click();
  await page.getByLabel('Firmware files', { exact: true }).setInputFiles(a.path);
  // The second one is dropped on the drop area (a real DataTransfer with a File).
  const b64 = readFileSync(b.path).toString('base64');
  const transfer = await page.evaluateHandle((data) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], 'lamp-1.2.0.bin', { type: 'application/octet-stream' }));
    return dt;
  }, b64);
  const drop = page.getByRole('group', { name: 'Drop area' });
  await drop.dispatchEvent('dragenter', { dataTransfer: transfer });
  await drop.dispatchEvent('drop', { dataTransfer: transfer });
  await page.locator('li.item[data-file="lamp-1.2.0.bin"]').waitFor();
  await page.getByRole('button', { name: 'Upload all (2)' }).click();
  await page.locator('article.build', { hasText: 'lamp 1.2.0' }).waitFor();
  await page.locator('article.build', { hasText: 'lamp 1.1.0' }).waitFor();
  await checkA11y(page);
  await screenshot(page, 'firmware');
  assert.deepEqual(page.pageErrors, []);
});

test('on a slow link the bar shows the bytes sent as they go, and an upload can be cancelled', async () => {
  const page = await newPage(browser, server);
  await signInAs(page, server, 'operator');
  await page.goto('/firmware');
  await page.getByRole('heading', { name: 'Upload builds' }).waitFor();
  // Slow the page's network down (Chromium's own throttling) so the upload takes seconds.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 20, downloadThroughput: 4 * 1024 * 1024, uploadThroughput: 256 * 1024 });

  const slow = imageFile('slow-4.0.0.bin', { version: '4.0.0', project: 'slow', payload: 2 * 1024 * 1024 });
  await page.getByLabel('Firmware files', { exact: true }).setInputFiles(slow.path);
  const item = page.locator('li.item[data-file="slow-4.0.0.bin"]');
  await item.getByRole('button', { name: 'Upload', exact: true }).click();
  const bar = item.getByRole('progressbar');
  // Part of the bytes are sent: the bar is between 0 and 100, and says how much.
  const partial = await eventually(async () => {
    const v = Number(await bar.getAttribute('value').catch(() => 0));
    return v > 0 && v < 100 ? v : 0;
  }, 15_000, 'a partial progress');
  assert.ok(partial > 0 && partial < 100);
  assert.match(await item.innerText(), /\d+(\.\d)? (B|KiB|MiB) of 2\.0 MiB sent \(\d+%\)/);
  await item.getByRole('button', { name: 'Cancel the upload of slow-4.0.0.bin' }).click();
  await eventually(async () => (await item.getAttribute('data-status')) === 'cancelled', 5000, 'the cancellation');
  assert.match(await item.innerText(), /Cancelled: nothing was stored/);
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  const list = await server.api('GET', '/api/v1/firmware?product=slow');
  assert.equal(list.total, 0, 'nothing stored');
  // Try again: it goes through.
  await item.getByRole('button', { name: 'Try again' }).click();
  await eventually(async () => (await item.getAttribute('data-status')) === 'done', 30_000, 'the second upload');
  assert.equal(await bar.getAttribute('value'), '100');
  assert.deepEqual(page.pageErrors, []);
});

test('edit notes and channel, mark latest, delete refused while in a release (409), delete an unused build; phone width', async () => {
  const bin = espImage({ version: '3.0.0', project: 'fan', payload: 4096 });
  const form = new FormData();
  form.append('product', 'fan');
  form.append('file', new Blob([bin]), 'fan.bin');
  const inRelease = await server.api('POST', '/api/v1/firmware', form);
  const form2 = new FormData();
  form2.append('product', 'fan');
  form2.append('file', new Blob([espImage({ version: '3.1.0', project: 'fan', payload: 4096 })]), 'fan2.bin');
  const unused = await server.api('POST', '/api/v1/firmware', form2);
  await server.api('POST', '/api/v1/releases', { product: 'fan', version: '3.0.0', artifact_ids: [inRelease.id] });

  const page = await newPage(browser, server);
  await signInAs(page, server, 'operator');
  await page.goto('/firmware?product=fan');
  const card = page.locator(`article[data-build="${inRelease.id}"]`);
  await card.waitFor();
  assert.equal(await page.locator('article.build').count(), 2, 'the product filter applies');

  // Edit notes and channel.
  await card.getByRole('button', { name: /Edit notes and channel/ }).click();
  await card.getByLabel('Channel').fill('beta');
  await card.getByLabel('Notes').fill('Quieter motor');
  await card.getByRole('button', { name: 'Save' }).click();
  await eventually(async () => /Quieter motor/.test(await card.innerText()), 5000, 'the notes to show');
  const stored = await server.api('GET', `/api/v1/firmware/${inRelease.id}`);
  assert.equal(stored.channel, 'beta');
  assert.equal(stored.notes, 'Quieter motor');

  // Mark the unused one as the product's latest.
  const other = page.locator(`article[data-build="${unused.id}"]`);
  await other.getByRole('button', { name: /Mark as latest/ }).click();
  const dialog = page.getByRole('dialog');
  assert.match(await dialog.innerText(), /Seed-002 devices of fan/);
  await dialog.getByRole('button', { name: 'Mark as latest' }).click();
  await other.locator('.badge', { hasText: 'latest' }).waitFor();
  const latest = await server.api('GET', '/api/v1/products/fan/latest');
  assert.equal(latest.artifact_id, unused.id);
  assert.equal(latest.marked, true);

  // Deleting the build in a release: the server's 409 reason in the dialog.
  await card.getByRole('button', { name: /^Delete/ }).click();
  await dialog.getByRole('button', { name: 'Delete the build' }).click();
  const refusal = dialog.getByRole('alert');
  await refusal.waitFor();
  assert.match(await refusal.innerText(), /artifact_in_release|release/);
  await checkA11y(page);
  await screenshot(page, 'firmware-delete-refused');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await server.api('GET', `/api/v1/firmware/${inRelease.id}`);

  // Phone width.
  await page.setViewportSize({ width: 390, height: 844 });
  await checkA11y(page);
  await screenshot(page, 'firmware-phone');
  await page.setViewportSize({ width: 1280, height: 860 });

  // The unused build is deleted.
  await other.getByRole('button', { name: /^Delete/ }).click();
  await dialog.getByRole('button', { name: 'Delete the build' }).click();
  await other.waitFor({ state: 'detached' });
  const r = await fetch(`${server.url}/api/v1/firmware/${unused.id}`, { headers: { Authorization: `Bearer ${server.adminKey}` } });
  assert.equal(r.status, 404);
  assert.deepEqual(page.pageErrors, []);
});

test('the list shows the build usage (releases, devices), and the details', async (t) => {
  if (!(await hasUsageRoute())) {
    t.skip('this server has no GET /api/v1/firmware/{id}/usage yet (h15-api)');
    return;
  }
  const form = new FormData();
  form.append('product', 'heater');
  form.append('file', new Blob([espImage({ version: '2.0.0', project: 'heater', payload: 4096 })]), 'h.bin');
  const build = await server.api('POST', '/api/v1/firmware', form);
  const release = await server.api('POST', '/api/v1/releases', { product: 'heater', version: '2.0.0', artifact_ids: [build.id] });
  for (let i = 0; i < 3; i++) {
    await server.api('POST', '/api/v1/devices', { mac: `02:00:00:00:10:0${i}`, product: 'heater', hardware: 'esp32', version: '2.0.0' });
  }
  const page = await newPage(browser, server);
  await signInAs(page, server, 'viewer');
  await page.goto('/firmware?product=heater');
  const card = page.locator(`article[data-build="${build.id}"]`);
  await card.waitFor();
  await eventually(async () => /1 release,\s*3 devices run it/.test(await card.locator('[data-usage]').innerText()), 5000, 'the usage counts');
  await card.getByRole('button', { name: /Details/ }).click();
  await card.getByRole('link', { name: 'heater 2.0.0 (stable)' }).waitFor();
  assert.match(await card.getByRole('link', { name: 'heater 2.0.0 (stable)' }).getAttribute('href'), /\/releases/);
  assert.match(await card.innerText(), /3 running it/);
  void release;
  // A viewer sees no write buttons.
  assert.equal(await page.getByRole('button', { name: /^Delete/ }).count(), 0);
  assert.equal(await page.getByRole('button', { name: 'Choose files…' }).count(), 0);
  await checkA11y(page);
  await screenshot(page, 'firmware-usage');
  assert.deepEqual(page.pageErrors, []);
});

// Configuration: an operator edits a product layer (JSON validated in the page, If-Match
// against a concurrent writer), sees its history and the diff of two versions, and reverts
// through a confirmation; a secret stays masked in every view and its stored value survives
// the round trip through the editor; stale devices are listed and follow live changes; a
// viewer reads without write controls.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { checkA11y, eventually, launchBrowser, newPage, screenshot, signInAs, startServer } from './harness.mjs';

const SECRET = 'hunter2-wifi-passphrase';
let server;
let browser;
let devices;

before(async () => {
  server = await startServer({ UPDRAFT_MQTT_ENABLED: 'false' });
  browser = await launchBrowser();
  await server.api('PUT', '/api/v1/configs/product/lamp', {
    content: { wifi: { ssid: 'workshop', password: { $secret: SECRET } }, led: { brightness: 50, colour: 'warm' } },
    comment: 'first defaults',
  });
  devices = [];
  for (const [mac, name] of [['24:0A:C4:00:00:01', 'Kitchen lamp'], ['24:0A:C4:00:00:02', 'Hall lamp']]) {
    devices.push(await server.api('POST', '/api/v1/devices', { mac, name, product: 'lamp', issue_token: true }));
  }
  // The kitchen lamp applies version 1 and says so; the hall lamp never does.
  const fetched = await deviceConfig(devices[0].token);
  await fetch(`${server.url}/api/v1/device/config/ack`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${devices[0].token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ version: fetched.etag.replaceAll('"', '') }),
  }).then((r) => assert.equal(r.status, 204));
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function deviceConfig(token) {
  const r = await fetch(`${server.url}/api/v1/device/config`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(r.status, 200);
  return { etag: r.headers.get('etag'), body: await r.json() };
}

async function assertNoSecret(page) {
  assert.ok(!(await page.content()).includes(SECRET), 'the secret value never reaches the page');
}

const editor = (page) => page.getByLabel(/^Document \(JSON\)/);

test('edit a product layer, see history and diff, revert; the secret stays masked and stored', async () => {
  const page = await newPage(browser, server);
  const { username } = await signInAs(page, server, 'operator');
  await page.goto('/config');
  await page.getByRole('heading', { name: 'Configuration', exact: true }).waitFor();

  // Stale devices: both lamps have a layer; only the hall lamp never acknowledged.
  const stale = page.getByRole('region', { name: 'Devices with a stale configuration' });
  await stale.getByRole('link', { name: 'Hall lamp' }).waitFor();
  assert.equal(await stale.getByRole('link', { name: 'Kitchen lamp' }).count(), 0);
  assert.match(await stale.getByRole('row', { name: /Hall lamp/ }).innerText(), /never/);

  // Open the product layer.
  await page.getByLabel('Layer kind').selectOption('product');
  await page.getByLabel('Name', { exact: true }).fill('lamp');
  await page.getByRole('button', { name: 'Open the layer' }).click();
  await page.getByRole('heading', { name: 'Layer product:lamp' }).waitFor();
  assert.match(page.url(), /\/config\?kind=product&name=lamp$/);
  await page.getByText('Version 1, written').waitFor();
  const text = await editor(page).inputValue();
  assert.deepEqual(JSON.parse(text), { led: { brightness: 50, colour: 'warm' }, wifi: { password: { $secret: null }, ssid: 'workshop' } });
  assert.match(text, /\n {2}"led"/, 'formatted JSON');
  await page.getByText('Secrets here: /wifi/password.').waitFor();
  await assertNoSecret(page);

  // Invalid JSON: the page says why and will not send it.
  await editor(page).fill('{"led": {"brightness": 80,}}');
  await page.getByText(/^Not valid JSON/).waitFor();
  assert.equal(await editor(page).getAttribute('aria-invalid'), 'true');
  assert.equal(await page.getByRole('button', { name: 'Save as version 2' }).isDisabled(), true);
  await editor(page).fill('[1, 2]');
  await page.getByText('A layer is a JSON object ({…}), not an array.').waitFor();

  // A valid edit (the masked secret left as it is) becomes version 2.
  const edited = { led: { brightness: 80, colour: 'warm' }, wifi: { password: { $secret: null }, ssid: 'workshop' } };
  await editor(page).fill(JSON.stringify(edited, null, 2));
  await page.getByText('Valid JSON object (2 top-level keys).').waitFor();
  await page.getByLabel('Comment (optional)').fill('brighter');
  await page.getByRole('button', { name: 'Save as version 2' }).click();
  await page.getByText('Saved as version 2.').waitFor();
  const v2 = await server.api('GET', '/api/v1/configs/product/lamp');
  assert.equal(v2.version, 2);
  assert.equal(v2.content.led.brightness, 80);
  // The device still receives the secret: `{"$secret": null}` kept the stored value.
  assert.equal((await deviceConfig(devices[1].token)).body.wifi.password, SECRET);

  // Live: the kitchen lamp acknowledged version 1 only, so it is now stale too.
  await stale.getByRole('link', { name: 'Kitchen lamp' }).waitFor();

  // Someone else writes version 3 while the operator edits: the page says so, and a save
  // based on version 2 is refused by the server (If-Match) with its message.
  await editor(page).fill(JSON.stringify({ ...edited, led: { brightness: 90, colour: 'warm' } }, null, 2));
  await server.api('PUT', '/api/v1/configs/product/lamp', { content: { ...edited, led: { brightness: 60, colour: 'cold' } }, comment: 'from CI' });
  await page.getByText('Version 3 was written elsewhere while you edit.').waitFor();
  await page.getByRole('button', { name: 'Save as version 4' }).click();
  const alert = page.getByRole('alert');
  await alert.waitFor();
  assert.match(await alert.innerText(), /at version 3, not 2/);
  assert.match(await alert.innerText(), /precondition_failed/);
  assert.equal((await server.api('GET', '/api/v1/configs/product/lamp')).content.led.brightness, 60, 'nothing was overwritten');
  await page.getByRole('button', { name: 'Reload the current version (drops your edits)' }).click();
  await page.getByText('Version 3, written').waitFor();
  assert.equal(JSON.parse(await editor(page).inputValue()).led.colour, 'cold');
  assert.equal(await page.getByRole('alert').count(), 0, 'the refusal is gone once the current version is loaded');

  // History, newest first, with who wrote each version.
  const history = page.getByRole('table', { name: 'Versions of product:lamp, newest first' });
  await eventually(async () => (await history.getByRole('row').count()) === 4, 10_000, 'three versions');
  const rows = await history.getByRole('row').allInnerTexts();
  assert.match(rows[1], /^3.*current.*key:admin.*from CI/s);
  assert.match(rows[2], new RegExp(`^2.*user:${username}.*brighter`, 's'));
  assert.match(rows[3], /^1.*key:admin.*first defaults/s);

  // One version's content, masked.
  await page.getByRole('button', { name: 'View version 1' }).click();
  const v1 = page.getByRole('region', { name: 'Content of version 1' });
  await v1.waitFor();
  assert.deepEqual(JSON.parse(await v1.innerText()).wifi.password, { $secret: null });

  // The diff between versions 1 and 2.
  await page.getByLabel('From version', { exact: true }).selectOption('1');
  await page.getByLabel('to version', { exact: true }).selectOption('2');
  await page.getByRole('button', { name: 'Show the differences' }).click();
  const diff = page.getByRole('table', { name: 'Changes from version 1 to version 2' });
  await diff.waitFor();
  const diffRows = await diff.getByRole('row').allInnerTexts();
  assert.equal(diffRows.length, 2, 'one change');
  assert.match(diffRows[1], /\/led\/brightness\s+changed\s+50\s+80/);

  await checkA11y(page);
  await screenshot(page, 'config');

  // Revert to version 1 through the confirmation, which says what will happen.
  await page.getByRole('button', { name: 'Revert to version 1' }).click();
  const dialog = page.getByRole('dialog', { name: 'Revert product:lamp to version 1?' });
  await dialog.waitFor();
  assert.match(await dialog.innerText(), /becomes a new version \(4\)/);
  await checkA11y(page);
  await dialog.getByRole('button', { name: 'Revert', exact: true }).click();
  await page.getByText('Version 1 restored as version 4.').waitFor();
  await page.getByText('Version 4, written').waitFor();
  const v4 = await server.api('GET', '/api/v1/configs/product/lamp');
  assert.equal(v4.version, 4);
  assert.deepEqual(v4.content.led, { brightness: 50, colour: 'warm' });
  assert.equal((await deviceConfig(devices[1].token)).body.wifi.password, SECRET, 'the secret survives the revert');
  // The history refreshes after the write: wait for its new row before reading the order.
  await history.getByRole('row').filter({ hasText: 'revert to version 1' }).first().waitFor();
  assert.match((await history.getByRole('row').allInnerTexts())[1], /^4.*revert to version 1/s);
  await assertNoSecret(page);
  assert.deepEqual(page.pageErrors, []);
});

test('a viewer reads layers and history without any write control; errors show the server message', async () => {
  const page = await newPage(browser, server, { viewport: { width: 390, height: 844 } });
  await signInAs(page, server, 'viewer');
  await page.goto('/config?kind=product&name=lamp');
  await page.getByRole('heading', { name: 'Layer product:lamp' }).waitFor();
  await page.getByRole('button', { name: /^View version/ }).first().waitFor();
  assert.equal(await editor(page).getAttribute('readonly'), '');
  assert.equal(await page.getByRole('button', { name: /^Save/ }).count(), 0);
  assert.equal(await page.getByRole('button', { name: /^Revert/ }).count(), 0);
  assert.equal(await page.getByRole('button', { name: /Delete the layer/ }).count(), 0);
  await assertNoSecret(page);
  await checkA11y(page);
  await screenshot(page, 'config-phone');

  // A layer that does not exist yet: said so, no blank screen.
  await page.goto('/config?kind=tag&name=eu');
  await page.getByText('This layer has no document yet.').waitFor();
  await page.getByText('No versions yet: the first save creates version 1.').waitFor();

  assert.deepEqual(page.pageErrors, []);
});

test('a write the server refuses shows its message', async () => {
  const page = await newPage(browser, server);
  await signInAs(page, server, 'operator');
  await page.goto('/config?kind=device&name=not-a-mac');
  await page.getByText('This layer has no document yet.').waitFor();
  await editor(page).fill('{"led": {"brightness": 10}}');
  await page.getByRole('button', { name: 'Create the layer' }).click();
  const alert = page.getByRole('alert').first();
  await alert.waitFor();
  assert.match(await alert.innerText(), /device `not-a-mac` not found/);
  assert.deepEqual(page.pageErrors, []);
});

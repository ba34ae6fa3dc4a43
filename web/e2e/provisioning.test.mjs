// Provisioning: a provisioner creates a product in `key` mode with a generated secret (shown
// once, and it is the secret the server checks: a device provisions with it), edits it
// (poll interval, anti-rollback floor; a bad floor shows the server's message), and makes a
// pair key (shown once; a device uses it). An admin manages MQTT credentials (the password
// shown once) and a product's configuration schema. What a role cannot do is not shown.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { checkA11y, launchBrowser, newPage, screenshot, signInAs, startServer } from './harness.mjs';

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

async function provision(body) {
  const r = await fetch(`${server.url}/api/v1/device/provision`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

test('a provisioner creates and edits a product, its secret shown once, and makes a pair key', async () => {
  const page = await newPage(browser, server);
  await signInAs(page, server, 'provisioner');
  await page.goto('/provisioning');
  await page.getByRole('heading', { name: 'Provisioning', exact: true }).waitFor();
  await page.getByText('No product is configured yet').waitFor();
  assert.equal(await page.getByRole('heading', { name: 'MQTT credentials' }).count(), 0, 'MQTT credentials are admin only');

  // Create a product in `key` mode with a secret generated in the page.
  await page.getByRole('button', { name: 'New product' }).click();
  const form = page.getByRole('form', { name: 'New product' });
  await form.getByLabel('Product name').fill('lamp');
  await form.getByLabel('Provisioning mode').selectOption('key');
  await form.getByLabel('Provisioning key', { exact: true }).fill('lamp-2026');
  await form.getByRole('button', { name: 'Generate a secret' }).click();
  const secret = await form.getByLabel(/^Provisioning secret/).inputValue();
  assert.equal(secret.length, 32);
  await form.getByLabel('Poll interval (seconds)').fill('1800');
  await form.getByRole('button', { name: 'Create the product' }).click();
  await page.getByText('Product lamp saved.').waitFor();
  const shown = page.getByText('Copy this provisioning secret now');
  await shown.waitFor();
  assert.ok((await page.locator('.secret code').innerText()).includes(secret), 'the secret is shown once');
  assert.equal(await form.getByLabel(/^Provisioning secret/).inputValue(), '', 'and cleared from the field');
  const row = page.getByRole('row', { name: /lamp/ });
  await row.waitFor();
  assert.match(await row.innerText(), /key \+ secret\s+lamp-2026 · secret set\s+30 min/);
  const stored = await server.api('GET', '/api/v1/products/lamp');
  assert.equal(stored.provisioning, 'key');
  assert.equal(stored.has_provision_secret, true);
  assert.equal(stored.poll_interval_s, 1800);

  // It is the secret the server checks: a device provisions with it, and not without it.
  const device = { mac: '24:0A:C4:AA:00:01', product: 'lamp', hardware: 'esp32', version: '1.0.0', provision_key: 'lamp-2026' };
  assert.equal((await provision({ ...device, provision_secret: 'not-the-secret-at-all' })).status, 403);
  const ok = await provision({ ...device, provision_secret: secret });
  assert.equal(ok.status, 201);
  assert.equal(ok.body.poll_interval_s, 1800);

  // Edit: a bad floor shows the server's message; a good one is saved.
  await row.getByRole('button', { name: 'Edit product lamp' }).click();
  const edit = page.getByRole('form', { name: 'Edit product lamp' });
  await edit.waitFor();
  assert.equal(await edit.getByLabel('Product name').getAttribute('readonly'), '');
  assert.equal(await edit.getByLabel(/^Provisioning secret/).inputValue(), '', 'the stored secret is never shown again');
  await edit.getByLabel('Anti-rollback floor (version)').fill('1.x');
  await edit.getByLabel('Poll interval (seconds)').fill('900');
  await edit.getByRole('button', { name: 'Save the product' }).click();
  const alert = page.getByRole('alert');
  await alert.waitFor();
  assert.match(await alert.innerText(), /min_version: `1.x` is not a version/);
  await edit.getByLabel('Anti-rollback floor (version)').fill('1.2.0');
  await edit.getByRole('button', { name: 'Save the product' }).click();
  await page.getByText('Product lamp saved.').waitFor();
  assert.equal(await page.getByText('Copy this provisioning secret now').count(), 0, 'no new secret, none shown');
  await page.getByRole('row', { name: /lamp.*15 min.*1\.2\.0/ }).waitFor();
  const edited = await server.api('GET', '/api/v1/products/lamp');
  assert.equal(edited.min_version, '1.2.0');
  assert.equal(edited.poll_interval_s, 900);
  assert.equal(edited.has_provision_secret, true, 'the secret was kept');
  // A provisioner cannot write the configuration schema (operate): it is not offered.
  assert.equal(await page.getByRole('button', { name: 'Save the schema' }).count(), 0);

  // A pair key, shown once; a new device presents it and is bound to the owner.
  const pairing = page.getByRole('region', { name: 'Pair keys' });
  await pairing.getByLabel('Owner').fill('alice@example.com');
  await pairing.getByRole('button', { name: 'Create a pair key' }).click();
  await pairing.getByText('Copy this pair key now').waitFor();
  const pairKey = (await pairing.locator('.secret code').innerText()).trim();
  assert.match(pairKey, /^[A-Z0-9]{4}-[A-Z0-9]{4}$/);
  const pair = await fetch(`${server.url}/api/v1/device/pair`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ok.body.token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ pair_key: pairKey }),
  });
  assert.equal(pair.status, 200, await pair.clone().text());
  assert.equal((await pair.json()).owner, 'alice@example.com');
  assert.equal((await server.api('GET', `/api/v1/devices/${ok.body.device_id}`)).owner, 'alice@example.com');

  await checkA11y(page);
  assert.deepEqual(page.pageErrors, []);
});

test('an admin manages MQTT credentials (password shown once) and a configuration schema', async () => {
  await server.api('PUT', '/api/v1/products/meter', { provisioning: 'preregistered', poll_interval_s: 3600 });
  const page = await newPage(browser, server);
  await signInAs(page, server, 'admin');
  await page.goto('/provisioning');
  const mqtt = page.getByRole('region', { name: 'MQTT credentials' });
  await mqtt.getByText('No MQTT credentials yet.').waitFor();

  await mqtt.getByLabel('MQTT username').fill('grafana');
  await mqtt.getByLabel('Role').selectOption('fleet-read');
  const password = await mqtt.getByLabel(/^Password/).inputValue();
  assert.ok(password.length >= 24, 'a generated password is offered');
  await mqtt.getByRole('button', { name: 'Create the credential' }).click();
  await mqtt.getByText('Copy this password of grafana now').waitFor();
  assert.equal((await mqtt.locator('.secret code').innerText()).trim(), password);
  assert.notEqual(await mqtt.getByLabel(/^Password/).inputValue(), password, 'the form moved on to a new password');
  await mqtt.getByRole('row', { name: /grafana\s+fleet-read/ }).waitFor();
  const users = await server.api('GET', '/api/v1/mqtt/users');
  assert.deepEqual(users.items.map((u) => [u.username, u.role]), [['grafana', 'fleet-read']]);
  assert.ok(!JSON.stringify(users).includes(password), 'the server never lists the password');

  // The configuration schema of a product (admin may operate).
  await page.getByRole('button', { name: 'Edit product meter' }).click();
  const schema = page.getByLabel("JSON Schema of meter's configuration");
  await schema.fill('{"type": "object", "properties": {"interval": {"type": "integer"}}}');
  await page.getByRole('button', { name: 'Save the schema' }).click();
  await page.getByText('Schema saved').waitFor();
  assert.deepEqual(await server.api('GET', '/api/v1/products/meter/config-schema'), { type: 'object', properties: { interval: { type: 'integer' } } });
  // The schema is enforced by the server: the configuration page would show this refusal.
  await server.api('POST', '/api/v1/devices', { mac: '24:0A:C4:BB:00:01', product: 'meter' });
  await server.api('PUT', '/api/v1/configs/device/24:0A:C4:BB:00:01', { content: { interval: 60 } });

  await checkA11y(page);
  await screenshot(page, 'provisioning');

  // Delete the credential through the confirmation.
  await mqtt.getByRole('button', { name: 'Delete MQTT credential grafana' }).click();
  const dialog = page.getByRole('dialog', { name: 'Delete the MQTT credential grafana?' });
  await dialog.waitFor();
  assert.match(await dialog.innerText(), /can no longer connect/);
  await dialog.getByRole('button', { name: 'Delete the credential' }).click();
  await mqtt.getByText('No MQTT credentials yet.').waitFor();
  assert.deepEqual((await server.api('GET', '/api/v1/mqtt/users')).items, []);
  assert.deepEqual(page.pageErrors, []);
});

test('a viewer sees products but no write controls, pair keys or MQTT credentials', async () => {
  const page = await newPage(browser, server, { viewport: { width: 390, height: 844 } });
  await signInAs(page, server, 'viewer');
  await page.goto('/provisioning');
  await page.getByRole('row', { name: /lamp/ }).waitFor();
  assert.equal(await page.getByRole('button', { name: 'New product' }).count(), 0);
  assert.equal(await page.getByRole('heading', { name: 'Pair keys' }).count(), 0);
  assert.equal(await page.getByRole('heading', { name: 'MQTT credentials' }).count(), 0);
  await page.getByRole('button', { name: 'Show product lamp' }).click();
  await page.getByText('Your role reads products').waitFor();
  assert.equal(await page.getByRole('button', { name: /Save/ }).count(), 0);
  await checkA11y(page);
  await screenshot(page, 'provisioning-phone');
  assert.deepEqual(page.pageErrors, []);
});

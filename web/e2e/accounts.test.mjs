// Users, API keys, sessions and the audit log, as an admin in a real browser against a real
// server: a user created in the form can sign in; an API key is shown once, works with
// `fetch`, and is refused once revoked; the audit log lists those actions with their actor;
// a user who is not an admin sees only their own session.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { checkA11y, eventually, launchBrowser, newPage, screenshot, signIn, signInAs, startServer } from './harness.mjs';

let server;
let browser;
let admin;

before(async () => {
  server = await startServer({ UPDRAFT_MQTT_ENABLED: 'false' });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('an admin creates a user, and an API key shown once that works until it is revoked', async () => {
  const page = await newPage(browser, server);
  admin = await signInAs(page, server, 'admin');
  await page.getByRole('link', { name: 'Users & keys' }).click();
  await page.getByRole('heading', { name: 'Users & keys' }).waitFor();
  await page.getByTestId('users').waitFor();
  // Their own session is marked.
  await page.getByTestId('sessions').getByText('this session').waitFor();
  assert.match(await page.getByTestId('my-session').innerText(), new RegExp(`${admin.username}\\s+admin`));

  // A user, with a generated password shown once to pass on.
  const users = page.getByRole('form', { name: 'Create a user' });
  await users.getByLabel('Username').fill('carol');
  await users.getByRole('button', { name: 'Generate' }).click();
  await users.getByLabel('Role').selectOption('operator');
  await users.getByRole('button', { name: 'Create user' }).click();
  const row = page.getByTestId('users').locator('tr[data-user="carol"]');
  await row.waitFor();
  assert.match(await row.innerText(), /operator/);
  const carolPassword = (await page.locator('.secret code').innerText()).trim();
  assert.ok(carolPassword.length >= 12);
  const login = await fetch(`${server.url}/api/v1/session`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username: 'carol', password: carolPassword }),
  });
  assert.equal(login.status, 201, 'carol signs in with the shown password');

  // A server error is shown with its message: a duplicate user.
  await users.getByLabel('Username').fill('carol');
  await users.getByLabel(/Password/).fill('another-long-password');
  await users.getByRole('button', { name: 'Create user' }).click();
  await page.getByRole('alert').filter({ hasText: /carol|exists|taken/i }).waitFor();

  // Change carol's role through the confirmation.
  await row.getByRole('button', { name: 'Change role of carol' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.getByLabel('New role').selectOption('viewer');
  await dialog.getByRole('button', { name: 'Change role' }).click();
  await row.getByText('viewer').waitFor();
  assert.equal((await server.api('GET', '/api/v1/users/carol')).role, 'viewer');

  // An API key: shown once, usable at once.
  const keys = page.getByRole('form', { name: 'Create an API key' });
  await keys.getByLabel('Key name').fill('ci-e2e');
  await keys.getByLabel('Role').selectOption('viewer');
  await keys.getByRole('button', { name: 'Create key' }).click();
  const shown = page.getByTestId('new-key');
  await shown.waitFor();
  assert.match(await shown.innerText(), /shown only once/);
  const key = (await shown.locator('code').innerText()).trim();
  assert.match(key, /^upd_/);
  const use = () => fetch(`${server.url}/api/v1/devices`, { headers: { Authorization: `Bearer ${key}` } });
  assert.equal((await use()).status, 200, 'the new key works');
  const keyRow = page.getByTestId('keys').locator('tr[data-key="ci-e2e"]');
  await keyRow.waitFor();
  assert.equal(await keyRow.locator('code').count(), 0, 'the list never shows the secret');

  await checkA11y(page);
  await screenshot(page, 'users');

  // Revoke it through the confirmation; it is refused from then on.
  await keyRow.getByRole('button', { name: 'Revoke ci-e2e' }).click();
  assert.match(await page.getByRole('dialog').innerText(), /refused at once/);
  await page.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
  await keyRow.waitFor({ state: 'detached' });
  assert.equal((await use()).status, 401, 'the revoked key is refused');
  assert.equal(await page.getByTestId('new-key').count(), 0, 'the revoked key is no longer shown');
  await page.getByLabel('Show revoked keys').check();
  await keyRow.getByText('revoked').waitFor();

  // Disable carol: her logins are refused.
  await row.getByRole('button', { name: 'Disable carol' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Disable' }).click();
  await row.getByText('disabled').waitFor();
  const refused = await fetch(`${server.url}/api/v1/session`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username: 'carol', password: carolPassword }),
  });
  assert.equal(refused.status, 401);
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

test('the audit log shows those actions with their actor, filters them and links the export', async () => {
  const page = await newPage(browser, server);
  await signIn(page, admin);
  await page.goto('/audit');
  const table = page.getByTestId('audit');
  await table.waitFor();
  const actor = `user:${admin.username}`;
  for (const action of ['create_user', 'patch_user', 'create_key', 'revoke_key']) {
    const row = table.locator(`tr[data-action="${action}"][data-actor="${actor}"][data-result="ok"]`).first();
    await row.waitFor();
    assert.match(await row.innerText(), /ok 20\d/);
  }
  // The refused duplicate is there too, as failed.
  assert.match(await table.locator('tr[data-action="create_user"][data-result="failed"]').first().innerText(), /failed 409/);
  await checkA11y(page);
  await screenshot(page, 'audit');

  // Filter by the action (a click on it), through the address bar.
  await table.locator('tr[data-action="revoke_key"]').first().getByRole('button', { name: /revoke_key/ }).click();
  await page.waitForURL(/action=revoke_key/);
  assert.equal(await page.getByRole('textbox', { name: 'Action', exact: true }).inputValue(), 'revoke_key');
  await eventually(async () => (await table.locator('tbody tr').evaluateAll((rows) => rows.every((r) => r.dataset.action === 'revoke_key'))), 10_000, 'only revoke_key rows');
  assert.match(await page.locator('.pager').innerText(), /of 1\b/);

  // The export link downloads JSON lines (with the session cookie).
  const href = await page.getByRole('link', { name: /Export/ }).getAttribute('href');
  assert.match(href, /^\/api\/v1\/audit\/export/);
  const r = await page.request.get(href);
  assert.equal(r.status(), 200);
  const lines = (await r.text()).trim().split('\n').map((l) => JSON.parse(l));
  assert.ok(lines.some((l) => l.action === 'create_key' && l.actor === actor));
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

test('someone who is not an admin sees only their own session, and no audit', async () => {
  const page = await newPage(browser, server);
  await signInAs(page, server, 'operator');
  assert.equal(await page.getByRole('link', { name: 'Users & keys' }).count(), 0, 'not in the navigation');
  assert.equal(await page.getByRole('link', { name: 'Audit' }).count(), 0, 'not in the navigation');
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Your account' }).click();
  await page.getByRole('heading', { name: 'Your account' }).waitFor();
  await page.getByTestId('sessions').getByText('this session').waitFor();
  assert.equal(await page.getByRole('form', { name: 'Create a user' }).count(), 0);
  assert.equal(await page.getByRole('form', { name: 'Create an API key' }).count(), 0);
  assert.equal(await page.getByTestId('sessions').locator('tbody tr').count(), 1, 'only their own session');
  await checkA11y(page);
  await page.goto('/audit');
  await page.getByRole('alert').filter({ hasText: 'admins only' }).waitFor();
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

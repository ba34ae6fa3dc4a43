// Sign-in: a wrong password is refused with the server's message, the right one opens the
// dashboard; an API key signs in too; signing out ends the session; the SPA's routes survive
// a reload.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { checkA11y, createUser, launchBrowser, newPage, screenshot, startServer } from './harness.mjs';

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

test('a wrong password is refused with the server message, then the right one signs in', async () => {
  const password = await createUser(server, 'alice', 'operator');
  const page = await newPage(browser, server);
  await page.goto('/devices?tag=lab');
  // Not signed in: the sign-in page, which remembers where we were going.
  await page.getByRole('heading', { name: 'Sign in to Updraft' }).waitFor();
  assert.match(page.url(), /\/login\?next=%2Fdevices%3Ftag%3Dlab$/);
  await checkA11y(page);
  await screenshot(page, 'sign-in');

  await page.getByLabel('Username').fill('alice');
  await page.getByLabel('Password').fill('not-her-password');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  const alert = page.getByRole('alert');
  await alert.waitFor();
  assert.match(await alert.innerText(), /password/i);
  assert.equal(await page.getByLabel('Password').inputValue(), '', 'the wrong password is cleared');

  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
  assert.match(page.url(), /\/devices\?tag=lab$/);
  assert.match(await page.locator('header').innerText(), /alice\s+operator/);

  // A reload of an app route keeps the page (index.html for the app's paths) and the session.
  await page.reload();
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
  assert.match(page.url(), /\/devices\?tag=lab$/);

  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to Updraft' }).waitFor();
  const r = await page.request.get('/api/v1/session');
  assert.equal(r.status(), 401, 'the session ended on the server');
  assert.deepEqual(page.pageErrors, []);
});

test('an API key signs in', async () => {
  const page = await newPage(browser, server);
  await page.goto('/');
  await page.getByRole('tab', { name: 'API key' }).click();
  await page.getByLabel('API key').fill(server.adminKey);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
  assert.match(await page.locator('header').innerText(), /admin/);
  assert.deepEqual(page.pageErrors, []);
});

test('the server answers the app paths with the app, and API paths with JSON', async () => {
  const html = await fetch(`${server.url}/rollouts/0191`, { headers: { Accept: 'text/html' } });
  assert.equal(html.status, 200);
  assert.equal(html.headers.get('cache-control'), 'no-cache');
  assert.match(await html.text(), /<div id="app">/);
  const api = await fetch(`${server.url}/api/v1/nothing-here`, { headers: { Accept: 'text/html' } });
  assert.equal(api.status, 404);
  assert.match(api.headers.get('content-type'), /json/);
});

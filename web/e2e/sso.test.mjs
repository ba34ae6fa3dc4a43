// Single sign-on from the sign-in page: with an OpenID provider configured, the page offers
// it; the provider's login brings the browser back signed in, with the role the provider's
// token gives (a real `oidc-provider`, the one of tests/api/oidc.rs).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { checkA11y, freePort, launchBrowser, newPage, screenshot, startOpenIdProvider, startServer } from './harness.mjs';

let server;
let provider;
let browser;

before(async () => {
  const port = await freePort();
  provider = await startOpenIdProvider(`http://127.0.0.1:${port}/api/v1/session/oidc/callback`);
  server = await startServer(
    {
      UPDRAFT_MQTT_ENABLED: 'false',
      UPDRAFT_OIDC_ISSUER: provider.issuer,
      UPDRAFT_OIDC_AUDIENCE: 'urn:updraft',
      UPDRAFT_OIDC_CLIENT_ID: 'updraft-dashboard',
      UPDRAFT_OIDC_CLIENT_SECRET: 'updraft-dashboard-secret',
      UPDRAFT_OIDC_ROLE_CLAIM: 'realm_access.roles',
    },
    { port },
  );
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await provider?.stop();
});

test('single sign-on through the OpenID provider signs in with the role of its token', async () => {
  const page = await newPage(browser, server);
  await page.goto('/devices');
  const sso = page.getByRole('link', { name: 'Sign in with single sign-on' });
  await sso.waitFor();
  await checkA11y(page);
  await screenshot(page, 'sign-in-sso');
  await sso.click();
  // The provider's own login form (oidc-provider's development interaction).
  await page.locator('input[name="login"]').fill('alice');
  await page.locator('input[name="password"]').fill('any');
  await page.locator('button[type="submit"]').click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 20_000 });
  assert.match(new URL(page.url()).pathname, /^\/devices$/, 'back where the sign-in started');
  assert.match(await page.locator('header').innerText(), /alice\s+admin/);
  const me = await (await page.request.get('/api/v1/session')).json();
  assert.equal(me.kind, 'oidc');
  assert.equal(me.actor, 'oidc:alice');
  assert.deepEqual(page.pageErrors, []);
});

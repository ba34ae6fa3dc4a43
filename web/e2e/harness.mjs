// The browser tests' harness: starts the real `updraft` binary on free loopback ports with a
// fresh data folder, drives Debian's Chromium through playwright-core, checks accessibility
// with axe-core, and saves screenshots to docs/screenshots/.
//
//   UPDRAFT_BIN       the server binary (default: ../target/debug/updraft)
//   UPDRAFT_WEB_DIR   serve the dashboard from this folder instead of the embedded copy
//                     (default: web/dist when it exists, so `npm run build` is enough)
//   CHROMIUM          the browser (default: /usr/bin/chromium)
//   UPDRAFT_E2E_SCREENSHOTS  folder for screenshots (default: docs/screenshots)
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const WEB = resolve(here, '..');
export const ROOT = resolve(WEB, '..');

export const ADMIN_KEY = 'e2e-admin-key-0123456789abcdef';

export function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.unref();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

/**
 * Starts a server. `env` adds settings (e.g. `{ UPDRAFT_MQTT_ENABLED: 'false' }`); `port`
 * chooses its HTTP port (default: a free one).
 * Returns `{ url, adminKey, dataDir, mqttPort, api, stop, log }`.
 */
export async function startServer(env = {}, { port: chosenPort } = {}) {
  const bin = process.env.UPDRAFT_BIN ?? join(ROOT, 'target/debug/updraft');
  if (!existsSync(bin)) throw new Error(`no server binary at ${bin}: build it (cargo build) or set UPDRAFT_BIN`);
  const dataDir = mkdtempSync(join(tmpdir(), 'updraft-e2e-'));
  const port = chosenPort ?? (await freePort());
  const mqttPort = await freePort();
  const webDir = process.env.UPDRAFT_WEB_DIR ?? (existsSync(join(WEB, 'dist/index.html')) ? join(WEB, 'dist') : undefined);
  const childEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    UPDRAFT_LISTEN: `127.0.0.1:${port}`,
    UPDRAFT_MQTT_LISTEN: `127.0.0.1:${mqttPort}`,
    UPDRAFT_DATA_DIR: dataDir,
    UPDRAFT_ADMIN_API_KEY: ADMIN_KEY,
    UPDRAFT_LOG_FORMAT: 'json',
    RUST_LOG: process.env.RUST_LOG ?? 'info',
    ...(webDir ? { UPDRAFT_WEB_DIR: webDir } : {}),
    ...env,
  };
  const child = spawn(bin, ['serve'], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the server exited (${child.exitCode}):\n${log}`);
    try {
      const r = await fetch(`${url}/api/ready`);
      if (r.ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the server did not get ready in 30 s:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const api = async (method, path, body, headers = {}) => {
    const init = { method, headers: { Authorization: `Bearer ${ADMIN_KEY}`, ...headers } };
    if (body instanceof FormData || body instanceof Uint8Array) init.body = body;
    else if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(url + path, init);
    const text = await r.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = text;
    }
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return json;
  };
  const stop = async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((ok) => {
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          ok();
        }, 10_000);
        child.on('exit', () => {
          clearTimeout(timer);
          ok();
        });
      });
    }
    rmSync(dataDir, { recursive: true, force: true });
  };
  return { url, adminKey: ADMIN_KEY, dataDir, mqttPort, api, stop, log: () => log };
}

/** Headless Debian Chromium, with the flags this machine's closed network needs. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
}

/** A new page (1280 px wide unless `viewport` says otherwise) that fails the test on page errors. */
export async function newPage(browser, server, { viewport = { width: 1280, height: 860 } } = {}) {
  const context = await browser.newContext({ viewport, baseURL: server.url });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  page.pageErrors = errors;
  return page;
}

/** Creates a user with `role` through the API; returns its password. */
export async function createUser(server, username, role) {
  const password = `pw-${randomBytes(9).toString('hex')}`;
  await server.api('POST', '/api/v1/users', { username, password, role });
  return password;
}

/** Signs in through the sign-in page and waits for the overview. */
export async function signIn(page, { username, password }) {
  await page.goto('/login');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
}

/** Signs in as a fresh user with `role` (default admin). */
export async function signInAs(page, server, role = 'admin') {
  const username = `${role}-${randomBytes(3).toString('hex')}`;
  const password = await createUser(server, username, role);
  await signIn(page, { username, password });
  return { username, password };
}

const axeSource = readFileSync(join(WEB, 'node_modules/axe-core/axe.min.js'), 'utf8');

/**
 * Runs axe-core (WCAG 2 A and AA rules) on the page; throws listing the violations.
 * `exclude` lists selectors to leave out (e.g. a third-party web component).
 */
export async function checkA11y(page, { exclude = [] } = {}) {
  // Through the debugger protocol, which the page's Content-Security-Policy does not govern.
  if (!(await page.evaluate(() => 'axe' in window))) await page.evaluate(axeSource);
  const result = await page.evaluate(async (exclude) => {
    // eslint-disable-next-line no-undef
    return await axe.run(
      { exclude: exclude.map((s) => [s]) },
      { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] }, resultTypes: ['violations'] },
    );
  }, exclude);
  if (result.violations.length) {
    const text = result.violations
      .map((v) => `${v.id} (${v.impact}): ${v.help}\n${v.nodes.slice(0, 5).map((n) => `    ${n.target.join(' ')}: ${n.failureSummary}`).join('\n')}`)
      .join('\n');
    throw new Error(`accessibility violations on ${page.url()}:\n${text}`);
  }
}

/** Saves a full-page screenshot as docs/screenshots/<name>.png. */
export async function screenshot(page, name) {
  const dir = process.env.UPDRAFT_E2E_SCREENSHOTS ?? join(ROOT, 'docs/screenshots');
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, `${name}.png`), fullPage: true });
}

/**
 * A valid ESP32-family app image (the layout of `domain::esp_image::builder`): the app
 * descriptor carries `version` and `project`; `chipId` 0 is ESP32, 9 is ESP32-S3.
 */
export function espImage({ version = '1.0.0', project = 'e2e-app', chipId = 0, payload = 4096 } = {}) {
  const maps = { 0: [0x3f400000, 0x400d0000, 0x40080000], 9: [0x3c000000, 0x42000000, 0x40374000] };
  const [drom, irom, iram] = maps[chipId] ?? [0x42000000, 0x42000000, 0x40800000];
  const desc = Buffer.alloc(256);
  desc.writeUInt32LE(0xabcd5432, 0);
  const put = (offset, len, s) => Buffer.from(s).copy(desc, offset, 0, Math.min(len - 1, Buffer.byteLength(s)));
  put(16, 32, version);
  put(48, 32, project);
  put(80, 16, '12:00:00');
  put(96, 16, 'Jan  1 2026');
  put(112, 32, 'v5.3.1');
  createHash('sha256').update(`${project}\0${version}`).digest().copy(desc, 144);
  const seg0 = Buffer.concat([desc, randomBytes(64)]);
  const dataOffset = 24 + 8 + seg0.length + 8;
  const segments = [
    [drom + 0x20, seg0],
    [irom + 0x10000 + (dataOffset & 0xffff), randomBytes(Math.ceil(payload / 4) * 4)],
    [iram, randomBytes(64)],
  ];
  const header = Buffer.alloc(24);
  header.writeUInt8(0xe9, 0);
  header.writeUInt8(segments.length, 1);
  header.writeUInt8(2, 2);
  header.writeUInt8((2 << 4) | 0, 3);
  header.writeUInt32LE(iram + 4, 4);
  header.writeUInt8(0xee, 8);
  header.writeUInt16LE(chipId, 12);
  header.writeUInt16LE(99, 17);
  header.writeUInt8(1, 23);
  const parts = [header];
  let checksum = 0xef;
  for (const [addr, data] of segments) {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(addr >>> 0, 0);
    h.writeUInt32LE(data.length, 4);
    parts.push(h, data);
    for (const b of data) checksum ^= b;
  }
  let body = Buffer.concat(parts);
  const padded = Math.ceil((body.length + 1) / 16) * 16 - 1;
  body = Buffer.concat([body, Buffer.alloc(padded - body.length), Buffer.from([checksum])]);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

/** Waits until `fn()` is truthy (polling every 100 ms), up to `ms`. */
export async function eventually(fn, ms = 10_000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * The test OpenID provider of the single sign-on tests (tests/oidc/provider.mjs, its node
 * modules in target/oidc-provider, which scripts/test.sh installs), sending browsers back to
 * `redirectUri`. Returns `{ issuer, stop }`.
 */
export async function startOpenIdProvider(redirectUri) {
  const dir = join(ROOT, 'target/oidc-provider');
  if (!existsSync(join(dir, 'node_modules/oidc-provider/package.json'))) {
    throw new Error(`no test OpenID provider in ${dir}: scripts/test.sh installs it (npm ci of tests/oidc there)`);
  }
  const script = join(dir, `provider-e2e-${process.pid}.mjs`);
  writeFileSync(script, readFileSync(join(ROOT, 'tests/oidc/provider.mjs')));
  const child = spawn('node', [script], { cwd: dir, env: { ...process.env, PORT: '0', REDIRECT_URI: redirectUri }, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d) => (log += d));
  const line = await new Promise((ok, fail) => {
    let out = '';
    const timer = setTimeout(() => fail(new Error(`the OpenID provider did not start in 60 s:\n${log}`)), 60_000);
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('\n')) {
        clearTimeout(timer);
        ok(out.split('\n')[0]);
      }
    });
    child.on('exit', (code) => fail(new Error(`the OpenID provider exited (${code}):\n${log}`)));
  });
  const { issuer } = JSON.parse(line);
  return {
    issuer,
    stop: async () => {
      child.kill('SIGTERM');
      rmSync(script, { force: true });
    },
  };
}

// Flash a new board over USB. Headless Chromium cannot reach a serial port, so these tests
// prove what can be proved without one: the manifest the page hands to esp-web-tools is right
// (chip family, offset, and its part downloads the very bytes of the build, by SHA-256), and
// the page offers esp-web-tools' install button (the custom element is defined, from
// /vendor, and rendered with that manifest).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { checkA11y, espImage, launchBrowser, newPage, screenshot, signInAs, startServer } from './harness.mjs';

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

async function uploadImage(bytes, fields) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  form.append('file', new Blob([bytes]), 'app.bin');
  return server.api('POST', '/api/v1/firmware', form);
}

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

/** Fetches the manifest the page links to, with the page's session, and its first part. */
async function manifestOf(page) {
  const href = await page.locator('a[data-manifest-url]').getAttribute('href');
  const r = await page.request.get(href);
  assert.equal(r.status(), 200, `GET ${href}`);
  const manifest = await r.json();
  const part = manifest.builds[0].parts[0];
  const bin = await page.request.get(new URL(part.path, new URL(href, server.url)).toString());
  assert.equal(bin.status(), 200, `GET ${part.path}`);
  return { href, manifest, part, bytes: await bin.body() };
}

test('an ESP32-S3 app image: ESP32-S3 at 0x10000, the same bytes, and the install button', async () => {
  const image = espImage({ version: '2.4.1', project: 'thermostat', chipId: 9, payload: 16384 });
  const build = await uploadImage(image, { product: 'thermostat', notes: 'first flash' });
  assert.equal(build.image.chip, 'esp32s3');
  // Another build, so the page has to preselect the right one from the address.
  await uploadImage(espImage({ version: '2.5.0', project: 'thermostat', chipId: 9 }), { product: 'thermostat' });

  const page = await newPage(browser, server);
  await signInAs(page, server, 'viewer');
  await page.goto(`/flash?firmware=${build.id}`);
  await page.getByRole('heading', { name: 'Flash a new board over USB' }).waitFor();
  assert.equal(await page.getByLabel('Stored build', { exact: true }).inputValue(), build.id, 'the build of ?firmware= is preselected');
  assert.equal(await page.getByLabel(/App image at 0x10000/).isChecked(), true, 'an app image goes to 0x10000 by default');
  assert.equal(await page.getByLabel(/Chip/).count(), 0, 'the image names its chip: no chip to choose');

  // The manifest as the page shows it, and as esp-web-tools will fetch it.
  const shown = page.getByLabel('Flash manifest (JSON)');
  await shown.waitFor();
  const { href, manifest, part, bytes } = await manifestOf(page);
  assert.deepEqual(JSON.parse(await shown.innerText()), manifest, 'the page shows the manifest it hands over');
  assert.equal(manifest.name, 'thermostat');
  assert.equal(manifest.version, '2.4.1');
  assert.equal(manifest.builds.length, 1);
  assert.equal(manifest.builds[0].chipFamily, 'ESP32-S3');
  assert.equal(part.offset, 0x10000);
  assert.equal(sha256(bytes), build.sha256, 'the part downloads the build');
  assert.equal(sha256(bytes), sha256(image), '…whose bytes are the uploaded file');

  // The install button: esp-web-tools' element, defined from /vendor and rendered with this manifest.
  const el = page.locator('esp-web-install-button');
  await el.waitFor();
  assert.equal(await page.evaluate(() => typeof customElements.get('esp-web-install-button')), 'function');
  assert.equal(await el.getAttribute('manifest'), href);
  const rendered = await el.evaluate((node) => ({
    shadow: !!node.shadowRoot,
    manifest: node.manifest,
    supported: node.hasAttribute('install-supported'),
    unsupported: node.hasAttribute('install-unsupported'),
    slots: [...(node.shadowRoot?.querySelectorAll('slot') ?? [])].map((s) => s.name),
  }));
  assert.ok(rendered.shadow, 'the element rendered its shadow root');
  assert.equal(rendered.manifest, href, 'the element uses the manifest the page shows');
  assert.ok(rendered.supported || rendered.unsupported, 'the element decided whether this browser can flash');
  console.log(`# esp-web-install-button: ${rendered.supported ? 'install-supported (Web Serial present)' : 'install-unsupported'}`);
  if (rendered.supported) {
    // Web Serial is present (Chromium on a loopback address): our "Connect and install" button fills its slot.
    assert.deepEqual(rendered.slots, ['activate']);
    assert.ok(await page.getByRole('button', { name: 'Connect and install thermostat 2.4.1' }).isVisible());
  } else {
    assert.ok(rendered.slots.includes('unsupported') || rendered.slots.includes('not-allowed'));
  }

  // Choosing the merged offset changes the manifest (and warns that an app image at 0x0 will not boot).
  await page.getByLabel(/Merged image at 0x0/).check();
  await page.getByText('replaces the bootloader').waitFor();
  await page.waitForFunction(() => document.querySelector('a[data-manifest-url]')?.getAttribute('href')?.includes('offset=0x0'));
  await shown.waitFor();
  const merged = await manifestOf(page);
  assert.equal(merged.part.offset, 0);
  assert.equal(merged.manifest.builds[0].chipFamily, 'ESP32-S3');
  assert.match(page.url(), /offset=0x0/, 'the choice is in the address');
  await page.getByLabel(/App image at 0x10000/).check();
  await page.waitForFunction(() => document.querySelector('a[data-manifest-url]')?.getAttribute('href')?.includes('offset=0x10000'));
  await shown.waitFor();

  await checkA11y(page);
  await screenshot(page, 'flash');
  assert.deepEqual(page.pageErrors, []);
});

test('a file that is not an app image asks for the chip, then flashes at 0x0', async () => {
  const bin = randomBytes(8192);
  bin[0] = 0x00; // not an ESP image
  const build = await server.api('POST', '/api/v1/firmware?product=gateway&version=1.0.0&hardware=esp32c3', new Uint8Array(bin), {
    'Content-Type': 'application/octet-stream',
  });
  assert.equal(build.image, null);

  // The server itself refuses a manifest without a chip for such a file, with a message.
  const refused = await fetch(`${server.url}/api/v1/firmware/${build.id}/flash-manifest`, { headers: { Authorization: `Bearer ${server.adminKey}` } });
  assert.equal(refused.status, 422);

  const page = await newPage(browser, server, { viewport: { width: 390, height: 844 } });
  await signInAs(page, server, 'operator');
  await page.goto('/flash');
  await page.getByLabel('Stored build', { exact: true }).selectOption(build.id);
  assert.match(page.url(), new RegExp(`firmware=${build.id}`));
  await page.getByText('Not an ESP32 app image').waitFor();
  assert.equal(await page.getByLabel(/Merged image at 0x0/).isChecked(), true, 'a non-image file goes to 0x0 by default');
  const chip = page.getByLabel('Chip (the build does not say it)', { exact: true });
  await chip.waitFor();
  await page.getByText('Choose the chip to see the manifest.').waitFor();
  assert.equal(await page.locator('esp-web-install-button').count(), 0, 'no install button before the chip is chosen');
  await checkA11y(page);

  await chip.selectOption('esp32c3');
  await page.getByLabel('Flash manifest (JSON)').waitFor();
  const { manifest, part, bytes } = await manifestOf(page);
  assert.equal(manifest.builds[0].chipFamily, 'ESP32-C3');
  assert.equal(part.offset, 0);
  assert.equal(sha256(bytes), build.sha256);
  assert.equal(sha256(bytes), sha256(bin));
  await page.locator('esp-web-install-button').waitFor();
  assert.match(page.url(), /chip=esp32c3/);
  await checkA11y(page);
  await screenshot(page, 'flash-phone');
  assert.deepEqual(page.pageErrors, []);
});

test('no build stored: the page says so and links to the firmware page', async () => {
  const empty = await startServer({ UPDRAFT_MQTT_ENABLED: 'false' });
  try {
    const page = await newPage(browser, empty);
    await signInAs(page, empty, 'viewer');
    await page.goto('/flash');
    await page.getByText('No build is stored yet.').waitFor();
    assert.ok(await page.getByRole('link', { name: 'Upload one on the Firmware page.' }).isVisible());
    await checkA11y(page);
  } finally {
    await empty.stop();
  }
});

test('a browser without Web Serial gets the explanation in the button’s place', async () => {
  const build = await uploadImage(espImage({ version: '3.0.0', project: 'thermostat', chipId: 9 }), { product: 'thermostat' });
  const page = await newPage(browser, server);
  // What Firefox or Safari look like to esp-web-tools: no navigator.serial.
  await page.context().addInitScript(() => {
    delete Navigator.prototype.serial;
  });
  await signInAs(page, server, 'viewer');
  await page.goto(`/flash?firmware=${build.id}`);
  await page.getByText('this browser has no Web Serial').waitFor();
  const el = page.locator('esp-web-install-button');
  await el.waitFor();
  assert.equal(await el.evaluate((node) => node.hasAttribute('install-unsupported')), true);
  // The element shows its `unsupported` slot, which the page fills with its own explanation.
  const note = page.getByText('This browser cannot flash boards.');
  await note.waitFor();
  assert.ok(await note.isVisible());
  assert.equal(await page.getByRole('button', { name: /Connect and install/ }).isVisible(), false);
  await checkA11y(page);
  assert.deepEqual(page.pageErrors, []);
});

// Drives the sam-jax web demo in headless Chromium for tests/test_web_demo.py.
//
//   node drive.mjs plan.json
//
// plan.json: {url, image, screenshot, chromium, steps: [...]} with steps
//   {op: "hover", x, y} | {op: "click", x, y, button?: "left" | "right", shift?: bool}
//   | {op: "drag", from: [x, y], to: [x, y]} | {op: "clear"}
// (x, y in image pixels), and optionally badImage: a file to open last, expecting the page's error.
// After each step it waits until the page is idle (no inference running
// or waiting, no frame pending) and reads back the mask overlay canvas. Prints one JSON object:
// {steps: [{op, prompt, painted, debugMatches, runs}], errors, blocked, timings}; `painted` is a
// string of '0'/'1' per image pixel (row-major), 1 where the overlay canvas has alpha > 0.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const origin = new URL(plan.url).origin;
const t0 = Date.now();
const timings = {};
const errors = [];
const blocked = [];

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sam-jax-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: plan.chromium || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  viewport: { width: 900, height: 600 },
});

try {
  const page = context.pages()[0] || (await context.newPage());
  // The page must work offline: anything not from the demo server is blocked and reported.
  await page.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + '/')) return route.continue();
    blocked.push(url);
    return route.abort();
  });
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => { if (msg.type() === 'error') errors.push(`console: ${msg.text()}`); });
  page.on('response', (r) => { if (r.status() >= 400) errors.push(`HTTP ${r.status()} ${r.url()}`); });

  await page.goto(plan.url);
  await page.waitForFunction(() => ['decoder-ready', 'error'].includes(document.body.dataset.state), null, { timeout: 60000 });
  timings.decoder_loaded_s = (Date.now() - t0) / 1000;
  await page.setInputFiles('#file', plan.image);
  await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: 120000 });
  timings.image_ready_s = (Date.now() - t0) / 1000;
  const state = await page.evaluate(() => document.body.dataset.state);
  if (state !== 'ready') throw new Error(`page state ${state}: ${await page.textContent('#status')}`);

  const canvas = await page.locator('#marks').boundingBox();
  const size = await page.evaluate(() => [document.getElementById('marks').width, document.getElementById('marks').height]);
  const toPage = (x, y) => [canvas.x + (x * canvas.width) / size[0], canvas.y + (y * canvas.height) / size[1]];

  const steps = [];
  for (const step of plan.steps) {
    const ts = Date.now();
    if (step.op === 'hover') {
      await page.mouse.move(...toPage(step.x, step.y));
    } else if (step.op === 'click') {
      await page.mouse.move(...toPage(step.x, step.y));
      if (step.shift) await page.keyboard.down('Shift');
      await page.mouse.click(...toPage(step.x, step.y), { button: step.button || 'left' });
      if (step.shift) await page.keyboard.up('Shift');
    } else if (step.op === 'drag') {
      await page.mouse.move(...toPage(...step.from));
      await page.mouse.down();
      const [a, b] = [toPage(...step.from), toPage(...step.to)];
      await page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, { steps: 4 }); // live box previews
      await page.mouse.move(...b, { steps: 4 });
      await page.mouse.up();
    } else if (step.op === 'clear') {
      await page.click('#clear');
    } else {
      throw new Error(`unknown step ${step.op}`);
    }
    await page.waitForFunction(() => window.__samDemo.idle(), null, { timeout: 60000 });
    // Two more frames, so that whatever was scheduled has been painted.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    const read = await page.evaluate(() => {
      const d = window.__samDemo;
      const c = document.getElementById('mask');
      const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const painted = new Uint8Array(c.width * c.height);
      for (let i = 0; i < painted.length; i++) painted[i] = px[4 * i + 3] > 0 ? 1 : 0;
      let debugMatches = d.lastMask === null ? painted.every((v) => v === 0) : d.lastMask.bits.every((v, i) => v === painted[i]);
      return {
        prompt: d.lastPrompt, painted: painted.join(''), debugMatches, runs: d.runs,
        clicks: d.state.clicks, box: d.state.box, decodeMs: d.lastDecodeMs,
      };
    });
    steps.push({ op: step.op, ms: Date.now() - ts, ...read });
  }
  if (plan.screenshot) await page.screenshot({ path: plan.screenshot });
  timings.total_s = (Date.now() - t0) / 1000;
  const pageErrors = await page.evaluate(() => window.__samDemo.errors);
  let badImage = null;
  if (plan.badImage) { // a file the server cannot decode: the page shows the server's message
    await page.setInputFiles('#file', plan.badImage);
    await page.waitForFunction(() => document.body.dataset.state === 'error', null, { timeout: 60000 });
    badImage = {
      status: await page.textContent('#status'),
      stageHidden: await page.evaluate(() => document.getElementById('stage').hidden),
    };
  }
  process.stdout.write(JSON.stringify({ steps, errors: errors.concat(pageErrors), blocked, timings, size, display: [canvas.width, canvas.height], badImage }) + '\n');
} catch (err) {
  process.stdout.write(JSON.stringify({ fatal: String(err && err.stack ? err.stack : err), errors, blocked, timings }) + '\n');
  process.exitCode = 1;
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}

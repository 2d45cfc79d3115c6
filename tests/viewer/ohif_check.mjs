// Drives the real OHIF v3 viewer in Debian's headless Chromium (playwright-core) and
// records what a radiologist would see: the study list, the CT, our SEG overlay and
// our SR measurements. Run by tests/test_ohif.py; it writes observed.json and PNG
// screenshots to --out. It only observes: pass/fail is decided by the Python test.
//
//   node tests/viewer/ohif_check.mjs --url http://127.0.0.1:PORT --study UID \
//        --out DIR --mode seg|sr|sr-stock|sr-hydrate [--seg-label TEXT] [--sr-label TEXT]
//        [--sr-measurements N] [--timeout MS]
//
// Requests to any host other than the viewer's are blocked and listed in the JSON.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--enable-unsafe-swiftshader',
  '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];

function parseArgs(argv) {
  const args = { mode: 'seg', timeout: 60000, segLabel: 'AI lesions', srLabel: 'AI report' };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-(.)/g, (_, c) => c.toUpperCase());
    args[key] = key === 'timeout' ? Number(argv[i + 1]) : argv[i + 1];
  }
  for (const required of ['url', 'study', 'out']) {
    if (!args[required]) throw new Error(`missing --${required}`);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
fs.mkdirSync(args.out, { recursive: true });
const observed = {
  mode: args.mode, study: args.study, steps: [], blocked_requests: [], console_errors: [],
  console_type_errors: [], console_sr: [],
  page_errors: [], failed_requests: [], screenshots: {},
};
const started = Date.now();
function step(name, extra = {}) {
  observed.steps.push({ name, ms: Date.now() - started, ...extra });
}
function save() {
  fs.writeFileSync(path.join(args.out, 'observed.json'), JSON.stringify(observed, null, 2));
}

/** The viewer's viewport region (canvas + SVG annotations) as a PNG file. */
async function shootViewport(page, name) {
  await page.mouse.move(5, 5); // no hover tooltip over the image
  await page.waitForTimeout(400);
  const file = path.join(args.out, `${name}.png`);
  await page.locator('[data-cy="viewport-pane"] canvas.cornerstone-canvas').first()
    .screenshot({ path: file });
  observed.screenshots[name] = file;
  return file;
}

async function shootPage(page, name) {
  const file = path.join(args.out, `${name}.png`);
  await page.screenshot({ path: file });
  observed.screenshots[name] = file;
}

/** What the active viewport shows: its image id (WADO-RS URL with the SOP Instance UID). */
async function currentImage(page) {
  return page.evaluate(() => {
    const engine = window.cornerstone?.getRenderingEngines?.()[0];
    const viewport = engine?.getViewports?.()[0];
    if (!viewport) return null;
    const imageId = viewport.getCurrentImageId?.() ?? null;
    const match = imageId && /instances\/([0-9.]+)/.exec(imageId);
    return {
      imageId,
      sopInstanceUid: match ? match[1] : null,
      index: viewport.getCurrentImageIdIndex?.() ?? null,
      type: viewport.type ?? null,
      label: document.querySelector('[data-cy="viewport-overlay-bottom-right"]')?.innerText ?? null,
    };
  });
}

async function closeTour(page) {
  // OHIF's onboarding tour (shepherd) comes up over a fresh profile's first viewer load.
  const skip = page.getByText('Skip all', { exact: true });
  try {
    await skip.waitFor({ state: 'visible', timeout: 15000 });
    await skip.click();
    step('tour closed');
  } catch {
    step('no tour');
  }
}

async function dataRows(page) {
  return page.locator('[data-cy="data-row"]').evaluateAll(rows => rows.map(row => ({
    title: row.querySelector('[data-cy="data-row-title"]')?.innerText?.trim() ?? '',
    color: row.querySelector('[data-cy="data-row-colorhex"]')?.style?.backgroundColor ?? null,
    text: row.innerText.replace(/\s+/g, ' ').trim(),
  })));
}

async function setRowVisible(page, title, visible) {
  const row = page.locator('[data-cy="data-row"]', {
    has: page.locator('[data-cy="data-row-title"]', { hasText: new RegExp(`^${title}$`) }),
  }).first();
  const toggle = row.locator('[data-cy="data-row-visibility-toggle"]');
  const label = await toggle.getAttribute('aria-label');
  // aria-label names the action: "Hide" while visible, "Show" while hidden.
  const isVisible = label !== 'Show';
  if (isVisible !== visible) {
    await toggle.click();
    await page.waitForTimeout(600);
  }
}

async function openStudyList(page) {
  await page.goto(`${args.url}/`);
  const row = page.locator('[data-cy^="studyRow-"], tr', { hasText: /SEG/ }).first();
  await row.waitFor({ timeout: args.timeout });
  observed.study_list = await page.locator('body').innerText();
  await shootPage(page, 'study-list');
  step('study list');
}

async function openViewer(page) {
  await page.goto(`${args.url}/viewer?StudyInstanceUIDs=${args.study}`);
  await page.locator('[data-cy="viewport-pane"] canvas.cornerstone-canvas').first()
    .waitFor({ timeout: args.timeout });
  await closeTour(page);
  await page.locator('[data-cy="viewport-overlay-bottom-right"]', { hasText: /I:\s*\d+/ })
    .waitFor({ timeout: args.timeout });
  observed.series_browser = await page.locator('[data-cy="studyBrowser-panel"]').innerText();
  observed.ct_image = await currentImage(page);
  await shootViewport(page, 'ct');
  step('CT displayed');
}

async function answerPrompt(page, name) {
  // OHIF asks before it hydrates a SEG/SR into the viewport ("Do you want to open this
  // Segmentation?" / "Do you want to continue tracking measurements for this study?").
  const yes = page.getByRole('button', { name: 'Yes', exact: true }).first();
  await yes.waitFor({ state: 'visible', timeout: args.timeout });
  observed[`${name}_prompt`] = await page.locator('[data-cy="viewport-pane"]').first().innerText();
  await yes.click();
  step(`${name} prompt answered`);
}

async function checkSeg(page) {
  await page.getByText(args.segLabel, { exact: false }).first().dblclick();
  await answerPrompt(page, 'seg');
  await page.locator('[data-cy="panelSegmentation-btn"]').click();
  await page.locator('[data-cy="data-row-title"]').first().waitFor({ timeout: args.timeout });
  observed.first_segment_frame_image = await currentImage(page);
  observed.segments = await dataRows(page);
  step('segmentation panel', { segments: observed.segments.map(s => s.title) });
  // Clicking a segment in the panel jumps to it (the slice at its centre).
  await page.locator('[data-cy="data-row-title"]', { hasText: /^Lesion$/ }).first().click();
  await page.waitForTimeout(1500);
  observed.lesion_image = await currentImage(page);
  await shootViewport(page, 'seg-all-segments');
  await shootPage(page, 'seg-page');
  for (const segment of observed.segments) {
    if (segment.title !== 'Lesion') await setRowVisible(page, segment.title, false);
  }
  await shootViewport(page, 'seg-lesion-only');
  await setRowVisible(page, 'Lesion', false);
  await shootViewport(page, 'seg-hidden');
  await setRowVisible(page, 'Lesion', true);
  observed.lesion_image_after_toggles = await currentImage(page);
  step('SEG overlay captured');
}

/** The SR annotations OHIF drew in the viewport's SVG layer. */
async function svgAnnotations(page) {
  return page.locator('[data-cy="viewport-pane"] svg.svg-layer').first().evaluate(svg => ({
    polylines: Array.from(svg.querySelectorAll('polyline')).map(line => ({
      points: (line.getAttribute('points') || '').trim().split(/\s+(?=[-\d.]+,)/).length,
      stroke: line.getAttribute('stroke'),
    })),
    // cornerstone's PlanarFreehandROI tool draws its contour as a <path> ("M x y L x y ...").
    paths: Array.from(svg.querySelectorAll('path')).map(item => ({
      points: ((item.getAttribute('d') || '').match(/[ML]/g) || []).length,
      closed: /Z\s*$/i.test((item.getAttribute('d') || '').trim()),
      stroke: item.getAttribute('stroke'),
    })),
    text_lines: Array.from(svg.querySelectorAll('tspan')).map(t => t.textContent.trim())
      .filter(Boolean),
  }));
}

async function waitForPolyline(page, ms) {
  try {
    await page.locator('[data-cy="viewport-pane"] svg.svg-layer polyline').first()
      .waitFor({ state: 'attached', timeout: ms });
    return true;
  } catch {
    return false;
  }
}

async function checkSr(page) {
  const measurements = Number(args.srMeasurements || 1);
  await page.getByText(args.srLabel, { exact: false }).first().dblclick();
  await page.locator('[data-cy="viewport-pane"] canvas.cornerstone-canvas').first()
    .waitFor({ timeout: args.timeout });
  await page.locator('[data-cy="viewport-action-arrows-right"]').first()
    .waitFor({ timeout: args.timeout });
  observed.sr_viewport_text = await page.locator('[data-cy="viewport-pane"]').first().innerText();
  step('SR viewport opened');
  // OHIF 3.13 opens the SR viewport on measurement 0 but may draw its annotation only
  // at the next render; stepping with the viewport's own arrows (as a reader does)
  // renders it.
  observed.sr_drawn_on_open = await waitForPolyline(page, 5000);
  if (!observed.sr_drawn_on_open) {
    await page.locator('[data-cy="viewport-action-arrows-right"]').first().click();
    await page.waitForTimeout(1000);
    await page.locator('[data-cy="viewport-action-arrows-left"]').first().click();
    await waitForPolyline(page, 10000);
  }
  observed.sr_measurements = [];
  for (let index = 0; index < measurements; index += 1) {
    if (index > 0) {
      await page.locator('[data-cy="viewport-action-arrows-right"]').first().click();
      await page.waitForTimeout(1000);
      await waitForPolyline(page, 10000);
    }
    const shot = await shootViewport(page, `sr-measurement-${index + 1}`);
    observed.sr_measurements.push({
      image: await currentImage(page), svg: await svgAnnotations(page), screenshot: shot,
    });
  }
  step('SR measurements stepped', { count: measurements });
  await shootPage(page, 'sr-page');
  await page.locator('[data-cy="trackedMeasurements-btn"]').click();
  await page.waitForTimeout(1000);
  observed.measurement_panel = await page.locator('#viewerLayoutResizableRightPanel').innerText();
  observed.measurement_panel_rows = await dataRows(page);
  await shootPage(page, 'sr-page-measurement-panel');
  step('measurement panel read');
}

/** Stock OHIF 3.13 on our SR: what the SR viewport shows after it settles. */
async function checkSrStock(page) {
  await page.getByText(args.srLabel, { exact: false }).first().dblclick();
  await page.waitForTimeout(8000);
  const pane = page.locator('[data-cy="viewport-pane"]').first();
  observed.sr_stock = {
    canvases: await pane.locator('canvas.cornerstone-canvas').count(),
    polylines: await pane.locator('svg.svg-layer polyline').count(),
    text: await pane.innerText(),
  };
  await shootPage(page, 'sr-stock-page');
  step('stock SR viewport observed');
}

/** A rehydratable SR (stock OHIF): open it, answer the tracking prompt with "Yes", read
 * the measurement panel, and for each listed measurement jump to it (click its row)
 * and record the image and the SVG annotations drawn there. */
async function checkSrHydrate(page) {
  const measurements = Number(args.srMeasurements || 1);
  await page.getByText(args.srLabel, { exact: false }).first().dblclick();
  await answerPrompt(page, 'sr');
  await page.waitForTimeout(2000);
  const panelButton = page.locator('[data-cy="trackedMeasurements-btn"]');
  if (await panelButton.count()) await panelButton.first().click();
  await page.locator('[data-cy="data-row-title"]').first().waitFor({ timeout: args.timeout });
  await page.waitForTimeout(1000);
  observed.measurement_panel = await page.locator('#viewerLayoutResizableRightPanel').innerText();
  observed.measurement_panel_rows = await dataRows(page);
  await shootPage(page, 'sr-hydrated-page');
  step('measurement panel read', { rows: observed.measurement_panel_rows.length });
  observed.sr_measurements = [];
  const rows = page.locator('[data-cy="data-row"]');
  for (let index = 0; index < Math.min(measurements, await rows.count()); index += 1) {
    await rows.nth(index).locator('[data-cy="data-row-title"]').click();
    await page.waitForTimeout(1500);
    await waitForPolyline(page, 10000);
    const shot = await shootViewport(page, `sr-hydrated-${index + 1}`);
    observed.sr_measurements.push({
      image: await currentImage(page), svg: await svgAnnotations(page), screenshot: shot,
    });
  }
  // Each measurement's statistics are complete once it was displayed.
  observed.measurement_panel_after = await page.locator('#viewerLayoutResizableRightPanel')
    .innerText();
  step('hydrated measurements visited', { count: observed.sr_measurements.length });
}

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ohif-chromium-'));
  const origin = new URL(args.url).host;
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS,
      viewport: { width: 1400, height: 900 },
    });
    await context.route('**/*', route => {
      const url = new URL(route.request().url());
      if (url.protocol.startsWith('http') && url.host !== origin) {
        observed.blocked_requests.push(url.href);
        return route.abort();
      }
      return route.continue();
    });
    const page = context.pages()[0] || await context.newPage();
    page.on('console', msg => {
      if (msg.type() === 'error') observed.console_errors.push(msg.text().slice(0, 500));
      if (/rehydratable|Unable to generate tool state|=== \w+ ===/.test(msg.text())) {
        observed.console_sr.push(`${msg.type()}: ${msg.text().slice(0, 300)}`);
      }
      if (/TypeError|_checkIfCanAddMeasurementsToDisplaySet/.test(msg.text())) {
        observed.console_type_errors.push(`${msg.type()}: ${msg.text().slice(0, 800)}`);
      }
    });
    page.on('pageerror', err => observed.page_errors.push(String(err).slice(0, 500)));
    page.on('response', response => {
      if (response.status() >= 400) {
        observed.failed_requests.push(`${response.status()} ${response.url()}`);
      }
    });
    page.setDefaultTimeout(args.timeout);
    await openStudyList(page);
    await openViewer(page);
    if (args.mode === 'seg') await checkSeg(page);
    else if (args.mode === 'sr') await checkSr(page);
    else if (args.mode === 'sr-stock') await checkSrStock(page);
    else if (args.mode === 'sr-hydrate') await checkSrHydrate(page);
    else throw new Error(`unknown --mode ${args.mode}`);
    observed.ok = true;
  } catch (err) {
    observed.ok = false;
    observed.error = String(err && err.stack || err);
    if (context) {
      const page = context.pages()[0];
      if (page) await shootPage(page, 'failure').catch(() => {});
    }
  } finally {
    observed.elapsed_ms = Date.now() - started;
    save();
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.exit(observed.ok ? 0 : 1);
}

await main();

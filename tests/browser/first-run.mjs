// A first run as a newcomer sees it: the built-in page of a node started
// with --demo-topic opens already subscribed to the demo topic, records
// arrive, and the cluster view shows the node and the stream's presence,
// live. Saves a screenshot.
//
// Usage: node first-run.mjs BASE_URL SCREENSHOT_PATH
// Prints one JSON line {records, nodes, presence}; exits 0 on success.

import { runTest } from './chromium.mjs';

const [baseArg, shotPath] = process.argv.slice(2);
const base = (baseArg || '').replace(/\/+$/, '');
const DEADLINE_MS = 20_000;
const result = { test: 'first_run', ok: false };

await runTest(result, async (browser) => {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${base}/`, { waitUntil: 'load' });
  const state = async () => page.evaluate(() => ({
    records: document.querySelectorAll('#events .event').length,
    nodes: [...document.querySelectorAll('#nodes tr.node')].map((r) => r.dataset.node),
    presence: Number(document.getElementById('presence').dataset.streams || 0),
    selector: document.getElementById('selector').value,
  }));
  const deadline = Date.now() + DEADLINE_MS;
  let s = await state();
  while (Date.now() < deadline && !(s.records >= 3 && s.nodes.length >= 1 && s.presence >= 1)) {
    await page.waitForTimeout(100);
    s = await state();
  }
  Object.assign(result, s);
  if (s.selector !== 'demo') throw new Error(`the page did not open on the demo topic: ${JSON.stringify(s)}`);
  if (s.records < 3) throw new Error(`no demo records arrived: ${JSON.stringify(s)}`);
  if (s.nodes.length < 1) throw new Error(`the cluster view shows no node: ${JSON.stringify(s)}`);
  if (s.presence < 1) throw new Error(`the presence of the demo topic is not shown: ${JSON.stringify(s)}`);
  if (errors.length) throw new Error(`JavaScript errors on the page: ${errors.join(' | ')}`);
  await page.screenshot({ path: shotPath, fullPage: true });
});

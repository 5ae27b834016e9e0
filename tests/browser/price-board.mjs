// The price-board example page (/examples/price-board) shows a table
// topic's current state from its snapshot, then each change live.
//
// Usage: node price-board.mjs BASE_URL TOPIC EXPECTED_STATE_JSON
//   EXPECTED_STATE_JSON  {key: value, ...}: the table's state when the page opens
// The script then publishes changes through herald's HTTP endpoint and waits
// for the board to show them. Prints one JSON line; exits 0 on success.

import { runTest } from './chromium.mjs';

const [baseArg, topic, expectedText] = process.argv.slice(2);
const base = (baseArg || '').replace(/\/+$/, '');
const DEADLINE_MS = 20_000;
const result = { test: 'price_board', topic, ok: false };

await runTest(result, async (browser) => {
  const expected = JSON.parse(expectedText);
  const page = await (await browser.newContext()).newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${base}/examples/price-board?topic=${encodeURIComponent(topic)}`, { waitUntil: 'load' });
  await page.waitForSelector('body[data-snapshot-keys]', { timeout: DEADLINE_MS });
  const board = async () => Object.fromEntries(await page.$$eval('#rows tr', (rows) =>
    rows.map((r) => [r.cells[0].textContent, r.cells[1].textContent])));
  const keys = await page.$eval('body', (b) => Number(b.dataset.snapshotKeys));
  const first = await board();
  if (JSON.stringify(first) !== JSON.stringify(Object.fromEntries(Object.entries(expected).sort()))) {
    throw new Error(`the board after the snapshot is ${JSON.stringify(first)}, not ${expectedText}`);
  }
  if (keys !== Object.keys(expected).length) throw new Error(`the mark said ${keys} keys`);
  // Live changes: an update of a shown key and a new key.
  const changes = { [Object.keys(expected)[0]]: '{"price":999}', zz_new: '{"price":1}' };
  for (const [key, value] of Object.entries(changes)) {
    const r = await fetch(`${base}/v1/topics/${encodeURIComponent(topic)}?key=${encodeURIComponent(key)}`,
      { method: 'POST', body: value });
    if (!r.ok) throw new Error(`publish ${key}: ${r.status} ${await r.text()}`);
  }
  const want = { ...expected, ...Object.fromEntries(Object.entries(changes).map(([k, v]) => [k, JSON.stringify(JSON.parse(v))])) };
  const deadline = Date.now() + DEADLINE_MS;
  let now = await board();
  while (Date.now() < deadline && JSON.stringify(now) !== JSON.stringify(Object.fromEntries(Object.entries(want).sort()))) {
    await page.waitForTimeout(100);
    now = await board();
  }
  if (JSON.stringify(now) !== JSON.stringify(Object.fromEntries(Object.entries(want).sort()))) {
    throw new Error(`the board did not follow the changes: ${JSON.stringify(now)}`);
  }
  const status = await page.$eval('#status', (s) => s.textContent);
  if (!status.startsWith('live')) throw new Error(`status: ${status}`);
  if (errors.length) throw new Error(`JavaScript errors on the page: ${errors.join(' | ')}`);
  result.keys = Object.keys(now).length;
});

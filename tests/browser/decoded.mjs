// The built-in page shows decoded records as formatted JSON, each with the
// schema it was decoded with, and herald.undecodable signals with their
// reason. The records are already in the topic (produced by confluent-kafka's
// serializers); the page opens from earliest.
//
// Usage: node decoded.mjs BASE_URL TOPIC EXPECTED_JSON SCHEMA_ID SUBJECT
//   EXPECTED_JSON  the value of one record, as herald must deliver it
// Prints one JSON line; exits 0 on success, 1 on failure.

import { runTest } from './chromium.mjs';

const [baseArg, topic, expectedText, schemaId, subject] = process.argv.slice(2);
const base = (baseArg || '').replace(/\/+$/, '');
const DEADLINE_MS = 20_000;
const result = { test: 'decoded_page', topic, ok: false };

// Deep equality that ignores member order (the page keeps herald's order).
const canon = (v) => Array.isArray(v) ? v.map(canon)
  : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon(v[k])]))
  : v;
const same = (a, b) => JSON.stringify(canon(a)) === JSON.stringify(canon(b));

await runTest(result, async (browser) => {
  const expected = JSON.parse(expectedText);
  const page = await (await browser.newContext()).newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${base}/?topic=${encodeURIComponent(topic)}&from=earliest`, { waitUntil: 'load' });
  const rows = async () => page.$$eval('#events .event', (els) => els.map((li) => ({
    data: li.querySelector('.data')?.textContent ?? '',
    meta: li.querySelector('.meta')?.textContent ?? '',
    type: li.querySelector('.meta .type')?.textContent ?? '',
  })));
  const deadline = Date.now() + DEADLINE_MS;
  let found = null;
  let undecodable = null;
  while (Date.now() < deadline && !(found && undecodable)) {
    for (const r of await rows()) {
      if (r.type === 'herald.undecodable') undecodable = r;
      let v;
      try { v = JSON.parse(r.data); } catch { continue; }
      if (same(v, expected)) found = r;
    }
    if (!(found && undecodable)) await page.waitForTimeout(100);
  }
  if (!found) throw new Error(`no row shows ${expectedText.slice(0, 200)}; rows: ${JSON.stringify((await rows()).slice(0, 3))}`);
  if (!found.data.includes('\n  ')) throw new Error(`the value is not formatted: ${found.data.slice(0, 120)}`);
  if (!found.meta.includes(`id ${schemaId}`) || !found.meta.includes(subject)) {
    throw new Error(`the row does not name schema ${schemaId} (${subject}): ${found.meta}`);
  }
  if (!undecodable) throw new Error('the herald.undecodable record is not shown');
  if (!undecodable.data.includes('not in the registry')) throw new Error(`undecodable row without its reason: ${undecodable.data}`);
  if (errors.length) throw new Error(`JavaScript errors on the page: ${errors.join(' | ')}`);
  result.meta = found.meta;
});

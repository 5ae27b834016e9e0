// Drives herald's built-in page (`/`) in headless Chromium, so a real browser
// EventSource receives the records.
//
// Usage: node page.mjs BASE_URL          (e.g. http://127.0.0.1:8080)
// Env:   CHROMIUM  path of the Chromium binary (default /usr/bin/chromium)
//
// 1. POST a warm-up record to a fresh topic browser-<random> (creates it).
// 2. Open BASE_URL/?topic=<topic>; wait for #status to read "open".
// 3. POST hello-<random> with fetch; wait for it in #events; check the warm-up
//    record is not shown (the page subscribes live, not from earliest).
// 4. Publish form-<random> through the page's own publish form; wait for it.
// Prints one JSON line; exits 0 on success, 1 on failure.

import { chromium } from 'playwright-core';
import { randomBytes } from 'node:crypto';

const OPEN_DEADLINE_MS = 20_000;
const EVENT_DEADLINE_MS = 10_000;
const KEY = 'k'; // one key -> one partition, so the warm-up would precede hello

const base = (process.argv[2] || '').replace(/\/+$/, '');
if (!/^https?:\/\//.test(base)) {
  console.error('usage: node page.mjs BASE_URL   (e.g. http://127.0.0.1:8080)');
  process.exit(2);
}

const rand = () => randomBytes(6).toString('hex');
const topic = `browser-${rand()}`;
const warmup = `warmup-${rand()}`;
const hello = `hello-${rand()}`;
const viaForm = `form-${rand()}`;
const result = { test: 'browser_page', base, topic, ok: false };
const t0 = Date.now();
const since = () => Date.now() - t0;

class Failure extends Error {}

async function publish(value) {
  const url = `${base}/v1/topics/${encodeURIComponent(topic)}?key=${encodeURIComponent(KEY)}`;
  let r;
  try {
    r = await fetch(url, { method: 'POST', body: value, signal: AbortSignal.timeout(10_000) });
  } catch (e) {
    const cause = e.cause ? ` (${e.cause.code || e.cause.message})` : '';
    throw new Failure(`POST ${url} failed: ${e.message}${cause}`);
  }
  const text = await r.text();
  if (r.status !== 200) throw new Failure(`POST ${url} answered ${r.status}: ${text.slice(0, 300)}`);
  try {
    return JSON.parse(text);
  } catch {
    throw new Failure(`POST ${url} answered 200 but not JSON: ${text.slice(0, 300)}`);
  }
}

// Texts of every `.event .data` in the list, newest first.
const shownData = (page) =>
  page.$$eval('#events .event .data', (els) => els.map((e) => e.textContent));

async function waitForData(page, value, what) {
  try {
    await page.waitForFunction(
      (v) => [...document.querySelectorAll('#events .event .data')].some((e) => e.textContent === v),
      value,
      { timeout: EVENT_DEADLINE_MS, polling: 50 },
    );
  } catch {
    const shown = await shownData(page).catch(() => []);
    const status = await page.textContent('#status').catch(() => '?');
    throw new Failure(
      `${what} ${JSON.stringify(value)} not shown within ${EVENT_DEADLINE_MS / 1000} s ` +
        `(status ${JSON.stringify(status)}, shown ${JSON.stringify(shown.slice(0, 10))})`,
    );
  }
}

let browser;
let exitCode = 1;
const pageErrors = [];
const consoleErrors = [];
try {
  // 1. Create the topic.
  result.warmup_offset = await publish(warmup);

  // 2. Open the page subscribed to it.
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 30_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  result.browser = browser.version();
  const context = await browser.newContext(); // fresh, throwaway profile
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });

  const pageUrl = `${base}/?topic=${encodeURIComponent(topic)}`;
  const resp = await page.goto(pageUrl, { waitUntil: 'load', timeout: OPEN_DEADLINE_MS });
  if (!resp || resp.status() !== 200) throw new Failure(`GET ${pageUrl} answered ${resp && resp.status()}`);
  const selector = await page.inputValue('#selector');
  if (selector !== topic) throw new Failure(`#selector is ${JSON.stringify(selector)}, expected ${JSON.stringify(topic)}`);

  try {
    await page.waitForFunction(
      () => ['open', 'error'].includes(document.querySelector('#status')?.textContent),
      null,
      { timeout: OPEN_DEADLINE_MS, polling: 50 },
    );
  } catch {
    const s = await page.textContent('#status').catch(() => '?');
    throw new Failure(`#status did not read "open" within ${OPEN_DEADLINE_MS / 1000} s (it reads ${JSON.stringify(s)})`);
  }
  const status = await page.textContent('#status');
  if (status !== 'open') {
    const detail = await page.textContent('#status-detail').catch(() => '');
    throw new Failure(`#status reads ${JSON.stringify(status)} (${detail}), not "open"`);
  }
  result.open_ms = since();

  // 3. A record published after the stream opened must show up.
  const t1 = Date.now();
  result.hello_offset = await publish(hello);
  await waitForData(page, hello, 'published record');
  result.hello_ms = Date.now() - t1;
  const shown = await shownData(page);
  if (shown.includes(warmup)) {
    throw new Failure(`the warm-up record ${JSON.stringify(warmup)} (published before subscribing) was shown: the page is not live-only`);
  }

  // 4. The page's own publish form.
  const t2 = Date.now();
  await page.fill('#pub-topic', topic);
  await page.fill('#pub-key', KEY);
  await page.fill('#pub-value', viaForm);
  await page.click('#publish');
  await waitForData(page, viaForm, 'record published with the form');
  result.form_ms = Date.now() - t2;
  try {
    await page.waitForFunction(
      () => /offset/.test(document.querySelector('#pub-result')?.textContent || ''),
      null, { timeout: EVENT_DEADLINE_MS, polling: 50 },
    );
  } catch {
    const r = await page.textContent('#pub-result').catch(() => '?');
    throw new Failure(`#pub-result does not show the offset: ${JSON.stringify(r)}`);
  }
  result.pub_result = await page.textContent('#pub-result');

  const final = await shownData(page);
  result.rows = final.length;
  if (final[0] !== viaForm || final[1] !== hello) {
    throw new Failure(`rows are not newest first: ${JSON.stringify(final.slice(0, 5))}`);
  }
  if (pageErrors.length) throw new Failure(`JavaScript errors on the page: ${pageErrors.join(' | ')}`);
  result.ok = true;
  exitCode = 0;
} catch (e) {
  result.error = e instanceof Failure ? e.message : `${e.name}: ${e.message}`;
} finally {
  if (browser) await browser.close().catch(() => {});
}
if (consoleErrors.length) result.console_errors = consoleErrors;
if (pageErrors.length) result.page_errors = pageErrors;
result.total_ms = since();
console.log(JSON.stringify(result));
if (exitCode !== 0) console.error(`browser page test: FAIL: ${result.error}`);
process.exit(exitCode);

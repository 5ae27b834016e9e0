// Many real EventSources in headless Chromium, driven over stdin/stdout by a
// Rust test (tests/cluster.rs) that kills and freezes the nodes behind them.
//
// Usage: node wave.mjs PORT PAGES PER_PAGE TOPIC
//   Opens PAGES pages, each on its own host name (h<i>.wave.test, mapped to
//   127.0.0.1) because Chromium allows 6 HTTP/1.1 connections per host; each
//   page opens PER_PAGE EventSources on TOPIC/k<n>.
// Prints `ready` once every stream is open, then answers each line read:
//   report   one JSON line: {"k<n>": {"values": [...], "closed": bool, "errors": n}}
//   quit     closes the browser and exits 0
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const [port, pages, perPage, topic] = process.argv.slice(2);
if (!port || !pages || !perPage || !topic) {
  console.error('usage: node wave.mjs PORT PAGES PER_PAGE TOPIC');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  timeout: 30_000,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--host-resolver-rules=MAP *.wave.test 127.0.0.1'],
});
const context = await browser.newContext();
const opened = [];
for (let i = 0; i < Number(pages); i++) {
  const page = await context.newPage();
  await page.goto(`http://h${i}.wave.test:${port}/healthz`);
  const keys = Array.from({ length: Number(perPage) }, (_, j) => `k${i * Number(perPage) + j}`);
  await page.evaluate(({ topic, keys }) => {
    window.__streams = {};
    for (const key of keys) {
      const s = { values: [], closed: false, errors: 0 };
      window.__streams[key] = s;
      const es = new EventSource(`/v1/events?topic=${encodeURIComponent(`${topic}/${key}`)}`);
      s.es = es;
      es.onmessage = (e) => s.values.push(e.data);
      // CLOSED after an error: the browser gave up on this stream for good.
      es.onerror = () => { s.errors += 1; if (es.readyState === EventSource.CLOSED) s.closed = true; };
    }
  }, { topic, keys });
  opened.push(page);
}
const report = async () => {
  const all = {};
  for (const page of opened) {
    Object.assign(all, await page.evaluate(() => Object.fromEntries(
      Object.entries(window.__streams).map(([k, s]) => [k, {
        values: s.values, closed: s.closed, errors: s.errors, state: s.es.readyState,
      }]),
    )));
  }
  return all;
};
const deadline = Date.now() + 30_000;
for (;;) {
  const streams = Object.values(await report());
  if (streams.every((s) => s.state === 1)) break;
  if (Date.now() > deadline) {
    console.error(`streams not open after 30 s: ${JSON.stringify(streams.map((s) => s.state))}`);
    await browser.close();
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, 50));
}
console.log('ready');
for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === 'report') {
    console.log(JSON.stringify(await report()));
  } else if (line.trim() === 'quit') {
    break;
  }
}
await browser.close();

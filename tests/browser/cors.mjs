// CORS from a real browser: a page on an allowed origin opens a credentialed
// EventSource to herald (the token travels in a cookie) and receives a record;
// the same page on a refused origin gets no stream.
// Usage: node cors.mjs ALLOWED_PAGE DENIED_PAGE TARGET TOPIC READ_TOKEN WRITE_TOKEN
import { chromium } from 'playwright-core';

const [allowedPage, deniedPage, target, topic, readToken, writeToken] = process.argv.slice(2);
const fail = (msg) => { console.error(msg); process.exitCode = 1; };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = { test: 'cors' };
try {
  const context = await browser.newContext();
  const targetUrl = new URL(target);
  await context.addCookies([{ name: 'herald_token', value: readToken, domain: targetUrl.hostname, path: '/' }]);
  const page = await context.newPage();
  const streamUrl = `${target}/v1/events?topic=${encodeURIComponent(topic)}`;

  // Opens an EventSource in the page; resolves with 'open' or 'refused'.
  const openStream = () => page.evaluate((url) => new Promise((resolve) => {
    const es = new EventSource(url, { withCredentials: true });
    window.__messages = [];
    es.onmessage = (e) => window.__messages.push(e.data);
    es.onopen = () => resolve('open');
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) resolve('refused'); };
    setTimeout(() => resolve('timeout'), 15000);
  }), streamUrl);

  await page.goto(allowedPage);
  result.allowed = await openStream();
  if (result.allowed !== 'open') throw new Error(`allowed origin: stream ${result.allowed}`);
  const value = `cors-${Math.random().toString(16).slice(2)}`;
  const res = await fetch(`${target}/v1/topics/${topic}?key=k`, {
    method: 'POST', body: value, headers: { authorization: `Bearer ${writeToken}` },
  });
  if (!res.ok) throw new Error(`publish: HTTP ${res.status} ${await res.text()}`);
  await page.waitForFunction((v) => window.__messages.includes(v), value, { timeout: 10000 });
  result.received = value;

  await page.goto(deniedPage);
  result.denied = await openStream();
  if (result.denied !== 'refused') throw new Error(`refused origin: stream ${result.denied}`);
  const leaked = await page.evaluate(() => window.__messages.length);
  if (leaked !== 0) throw new Error(`refused origin received ${leaked} messages`);
  result.ok = true;
  console.log(JSON.stringify(result));
} catch (e) {
  fail(`${e.message} ${JSON.stringify(result)}`);
} finally {
  await browser.close();
}

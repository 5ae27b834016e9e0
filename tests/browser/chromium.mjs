// Headless Chromium as every browser test here launches it.
import { chromium } from 'playwright-core';

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

// Runs `body(browser, result)` in a fresh headless Chromium, then prints
// `result` as one JSON line (with `ok`, or `error`) and exits 0 or 1.
export async function runTest(result, body) {
  let browser;
  let exitCode = 1;
  try {
    browser = await launch();
    await body(browser, result);
    result.ok = true;
    exitCode = 0;
  } catch (e) {
    result.error = `${e.name}: ${e.message}`;
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
  console.log(JSON.stringify(result));
  process.exit(exitCode);
}

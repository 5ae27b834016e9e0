// The built-in page's "where" and "fields" boxes: opened with both in its
// address, it fills the boxes, subscribes with them and shows only what
// passes, projected. Waits for a row whose text contains END, then prints
// {"where": box, "fields": box, "rows": [row texts, oldest first]}.
//
// Usage: node filtered.mjs PAGE_URL END
import { launch } from './chromium.mjs';

const [pageUrl, end] = process.argv.slice(2);
const browser = await launch();
let code = 1;
try {
  const page = await (await browser.newContext()).newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(pageUrl, { waitUntil: 'load' });
  await page.waitForFunction(
    (e) => [...document.querySelectorAll('#events .event .data')].some((d) => d.textContent.includes(e)),
    end, { timeout: 20_000, polling: 50 });
  const rows = await page.$$eval('#events .event .data', (els) => els.map((e) => e.textContent).reverse());
  const where = await page.inputValue('#where');
  const fields = await page.inputValue('#fields');
  if (errors.length) throw new Error(errors.join(' | '));
  console.log(JSON.stringify({ where, fields, rows }));
  code = 0;
} catch (e) {
  console.error(`filtered page: ${e.message}`);
} finally {
  await browser.close().catch(() => {});
}
process.exit(code);

// Drives the node's worklist page in headless Chromium on a phone-sized screen.
//
//   node worklist_check.mjs <config.json>
//
// config: {"baseUrl", "token", "studies": [study UIDs expected on the page],
//          "screenshots": [paths], "timeoutMs"}
// Signs in with the token through the login form, waits for the expected
// studies, waits for one automatic refresh, and prints one JSON line with what
// the page shows (cards in page order, research-use line, layout, thumbnails)
// for the Python test to check. Exit status 0 unless the browser failed.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const timeout = config.timeoutMs ?? 30000;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const result = { consoleErrors: [], failedRequests: [] };
try {
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
  });
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  page.on("console", (msg) => {
    if (msg.type() === "error") result.consoleErrors.push(msg.text());
  });
  page.on("response", (response) => {
    if (response.status() >= 400 && !response.url().endsWith("/login")) {
      result.failedRequests.push(`${response.status()} ${response.url()}`);
    }
  });

  await page.goto(config.baseUrl + "/worklist");
  result.loginUrl = page.url();
  await page.fill("#token", config.token);
  await Promise.all([page.waitForURL("**/worklist"), page.click("button[type=submit]")]);
  result.pageUrl = page.url();

  for (const uid of config.studies) {
    await page.waitForSelector(`li.study[data-study-uid="${uid}"][data-flag]:not([data-flag=""])`);
  }
  const loaded = Number(await page.getAttribute("body", "data-loaded"));
  await page.waitForFunction(
    (n) => Number(document.body.dataset.loaded) > n, loaded, { timeout },
  );
  result.refreshes = Number(await page.getAttribute("body", "data-loaded"));
  // Let the thumbnails of the last refresh load (or fall back to placeholders).
  await page.waitForFunction(() => [...document.querySelectorAll("img.thumb")]
    .every((img) => img.complete), null, { timeout });

  result.cards = await page.$$eval("li.study", (items) => items.map((li) => {
    const img = li.querySelector("img.thumb");
    const box = li.getBoundingClientRect();
    return {
      studyUid: li.dataset.studyUid,
      priority: li.querySelector(".priority").textContent,
      state: li.querySelector(".state").textContent,
      flag: li.querySelector(".flag").textContent,
      meta: li.querySelector(".meta").textContent,
      thumbnail: img ? { src: img.getAttribute("src"), width: img.naturalWidth } : null,
      placeholder: li.querySelector(".placeholder")?.textContent ?? null,
      left: box.left,
      right: box.right,
    };
  }));
  result.researchUse = await page.$$eval(".ruo", (nodes) => nodes.map((n) => {
    const box = n.getBoundingClientRect();
    const style = getComputedStyle(n);
    return { text: n.textContent, visible: box.width > 0 && box.height > 0
      && style.visibility !== "hidden" && style.display !== "none", top: box.top };
  }));
  result.layout = await page.evaluate(() => ({
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    viewport: document.querySelector('meta[name="viewport"]')?.getAttribute("content"),
  }));
  result.status = await page.textContent("#status");
  result.cookies = (await context.cookies()).map((c) => ({
    name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite,
  }));
  result.tokenInStorage = await page.evaluate((token) => {
    const values = [];
    for (const store of [window.localStorage, window.sessionStorage]) {
      for (let i = 0; i < store.length; i += 1) values.push(store.getItem(store.key(i)));
    }
    return values.some((v) => v && v.includes(token)) || document.cookie.includes(token);
  }, config.token);
  for (const path of config.screenshots) {
    await page.screenshot({ path, fullPage: true });
  }
  result.ok = true;
} catch (error) {
  result.ok = false;
  result.error = String(error && error.stack ? error.stack : error);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + "\n");

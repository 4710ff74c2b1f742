#!/usr/bin/env node
// Renders Swagger UI in headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core, which downloads no browser) and checks that the
// operations list appears.
//
// usage: node render-docs.mjs URL MIN_OPERATIONS [SCREENSHOT.png]
// Prints one line on success; exits 1 with the reason otherwise.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, minOps = "1", screenshot] = process.argv.slice(2);
if (!url) {
  console.error("usage: render-docs.mjs URL MIN_OPERATIONS [SCREENSHOT.png]");
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), "switchboard-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    timeout: 60_000,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  await page.goto(url, { waitUntil: "load", timeout: 30_000 });
  try {
    await page.waitForSelector(".opblock", { timeout: 30_000 });
  } catch {
    const err = await page.locator(".errors-wrapper, .loading-container").allInnerTexts().catch(() => []);
    throw new Error(`no operation appeared within 30 s ${err.join(" ").slice(0, 300)} ${problems.join("; ")}`);
  }
  const ops = await page.$$eval(".opblock", (els) =>
    els.map((e) => {
      const m = e.querySelector(".opblock-summary-method")?.textContent?.trim() ?? "?";
      const p = e.querySelector(".opblock-summary-path")?.textContent?.trim() ?? "?";
      return `${m} ${p.replace(/\u200b/g, "")}`;
    }),
  );
  const title = (await page.locator(".info .title").first().innerText().catch(() => "")).split("\n")[0];
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  if (problems.length) throw new Error(problems.join("; "));
  if (ops.length < Number(minOps)) {
    throw new Error(`only ${ops.length} operations rendered, expected ${minOps}: ${ops.join(", ")}`);
  }
  console.log(`headless Chromium renders /docs: "${title}", ${ops.length} operations (${ops.slice(0, 3).join(", ")}, ...)`);
} catch (e) {
  console.error(`render-docs: ${e.message}`);
  process.exitCode = 1;
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

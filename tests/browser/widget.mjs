// A site visitor in headless Chromium, driven by tests/tests/widget.rs:
//   node widget.mjs <landing page> <second page> <first message> <second message>
// It prints one line per step (SENT, REPLY, RELOADED, SENT2) for the Rust
// test to act on and check, and "FAIL <why>" with exit code 1 on any error.
// Every wait is bounded; the whole run stops itself after 90 seconds.
import { chromium } from "playwright-core";

const [landing, second, first, next] = process.argv.slice(2);
const step = (line) => process.stdout.write(line + "\n");
const fail = (why) => {
  step("FAIL " + String(why).replace(/\s+/g, " "));
  process.exit(1);
};
setTimeout(() => fail("timed out after 90 s"), 90_000).unref();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  args: [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
}).catch(fail);

try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => step("PAGEERROR " + e.message));
  await page.goto(landing);
  await page.click("#sb-chat-launcher");
  await page.fill(".sb-chat-input", first);
  await page.click(".sb-chat-send");
  // Acknowledged: the gateway has it on disk.
  await page.waitForSelector(".sb-from-visitor[data-seq]", { timeout: 20_000 });
  const visitor = await page.evaluate(() => window.SwitchboardChat.visitor());
  step("SENT " + visitor);

  const reply = await page.waitForSelector(".sb-from-manager", { timeout: 40_000 });
  step("REPLY " + JSON.stringify(await reply.textContent()));

  // Another page of the site: the same visitor, the conversation so far.
  await page.goto(second);
  await page.waitForFunction(
    () => document.querySelectorAll("#sb-chat .sb-chat-msg[data-seq]").length >= 2,
    null,
    { timeout: 20_000 },
  );
  const shown = await page.$$eval("#sb-chat .sb-chat-msg", (els) =>
    els.map((e) => [e.classList.contains("sb-from-manager") ? "manager" : "visitor", e.textContent]),
  );
  const again = await page.evaluate(() => window.SwitchboardChat.visitor());
  const open = await page.evaluate(() => document.getElementById("sb-chat").classList.contains("sb-open"));
  step("RELOADED " + JSON.stringify({ visitor: again, shown, open }));

  await page.fill(".sb-chat-input", next);
  await page.press(".sb-chat-input", "Enter");
  await page.waitForFunction(
    () => document.querySelectorAll("#sb-chat .sb-from-visitor[data-seq]").length >= 2,
    null,
    { timeout: 20_000 },
  );
  step("SENT2");
  await browser.close();
  process.exit(0);
} catch (e) {
  await browser.close().catch(() => {});
  fail(e.message || e);
}

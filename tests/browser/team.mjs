// Two employees in the corporate chat (a team line), each in a browser
// context of their own, driven by tests/tests/widget.rs:
//   node team.mjs <page with data-line="team">
// Prints one line, "DONE <json>" with what each of them saw, or
// "FAIL <why>" with exit code 1. Bounded: it stops itself after 90 seconds.
import { chromium } from "playwright-core";

const [page_url] = process.argv.slice(2);
const fail = (why) => {
  process.stdout.write("FAIL " + String(why).replace(/\s+/g, " ") + "\n");
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

const shown = (page) =>
  page.$$eval("#sb-chat .sb-chat-msg", (els) =>
    els.map((e) => [e.classList.contains("sb-from-manager") ? "other" : "mine", e.textContent]),
  );

async function signIn(page, user, password) {
  process.stderr.write(`signing in ${user}\n`);
  await page.waitForSelector("#sb-chat .sb-chat-sign-in", { timeout: 20_000 });
  await page.fill(".sb-chat-sign-in input[name=user]", user);
  await page.fill(".sb-chat-sign-in input[name=password]", password);
  await page.click(".sb-chat-sign-in button");
}

try {
  const anna = await (await browser.newContext()).newPage();
  anna.on("console", (m) => process.stderr.write("anna console: " + m.text() + "\n"));
  anna.on("websocket", (ws) => {
    ws.on("framesent", (f) => process.stderr.write("anna sent: " + f.payload + "\n"));
    ws.on("framereceived", (f) => process.stderr.write("anna got: " + f.payload + "\n"));
    ws.on("close", () => process.stderr.write("anna ws closed\n"));
  });
  anna.on("pageerror", (e) => process.stderr.write("anna error: " + e.message + "\n"));
  await anna.goto(page_url);
  await anna.click("#sb-chat-launcher");
  // A wrong password: the form comes back.
  await signIn(anna, "1001", "wrong");
  await anna.waitForSelector("#sb-chat .sb-chat-sign-in", { timeout: 20_000 });
  const refused = (await anna.$("#sb-chat .sb-chat-sign-in")) !== null;
  await signIn(anna, "1001", "demo1001");
  await anna.waitForFunction(() => !document.querySelector("#sb-chat .sb-chat-sign-in") &&
    window.SwitchboardChat.visitor() === "1001", null, { timeout: 20_000 });
  await anna.fill(".sb-chat-input", "Коллеги, кто возьмёт клиента из Твери?");
  await anna.click(".sb-chat-send");
  await anna.waitForSelector(".sb-from-visitor[data-seq]", { timeout: 20_000 });

  const boris = await (await browser.newContext()).newPage();
  await boris.goto(page_url);
  await boris.click("#sb-chat-launcher");
  await signIn(boris, "1002", "demo1002");
  await boris.waitForSelector(".sb-from-manager[data-seq]", { timeout: 20_000 });
  await boris.fill(".sb-chat-input", "Беру");
  await boris.press(".sb-chat-input", "Enter");
  await boris.waitForSelector(".sb-from-visitor[data-seq]", { timeout: 20_000 });
  const borisSaw = await shown(boris);

  // Anna sees Boris's answer live, and after a reload is still signed in.
  await anna.waitForSelector(".sb-from-manager[data-seq]", { timeout: 20_000 });
  const annaSaw = await shown(anna);
  await anna.reload();
  await anna.waitForFunction(
    () => document.querySelectorAll("#sb-chat .sb-chat-msg[data-seq]").length >= 2,
    null,
    { timeout: 20_000 },
  );
  const annaAfterReload = await shown(anna);
  const signInAfterReload = (await anna.$("#sb-chat .sb-chat-sign-in")) !== null;
  process.stdout.write("DONE " + JSON.stringify({ refused, borisSaw, annaSaw, annaAfterReload, signInAfterReload }) + "\n");
  await browser.close();
  process.exit(0);
} catch (e) {
  await browser.close().catch(() => {});
  fail(e.message || e);
}
